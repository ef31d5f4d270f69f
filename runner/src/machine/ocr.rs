//! Optical character recognition of a machine's screen, as nixpkgs' driver does it (`machine/ocr.py`): a
//! screendump, tesseract on it as it is, and, for the variants, tesseract on two images that ImageMagick prepared
//! (upscaled to 300 dpi, grey, contrast-stretched, posterized, blurred; once as is and once negated).
//!
//! The tools are the host's: `tesseract` (Debian's `tesseract-ocr`) and ImageMagick (Debian's `imagemagick`),
//! found on `PATH` like nixpkgs' driver finds them (its `enableOCR` puts them there). Each is started from an argv
//! vector with a deadline, and is killed when the deadline passes or the request is dropped.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::error::{OpError, OpResult};
use super::handle::Machine;

/// How long one tesseract or ImageMagick run may take. On an idle 2-core host tesseract needs 1 to 3 s and one
/// ImageMagick variant 4 to 10 s (it scales the screen to about 5300x3300 pixels); a loaded host (TCG guests,
/// builds) triples that. The deadline only guards against a tool that hangs.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(300);

/// nixpkgs' OCR engine mode: 2, the legacy and LSTM engines combined (its tesseract data has both).
const OEM_COMBINED: u8 = 2;
/// LSTM only: what Debian's `tesseract-ocr-eng` (the "fast" models, without the legacy engine's data) supports.
const OEM_LSTM: u8 = 1;

/// Set once tesseract has said that its data has no legacy engine: later runs go straight to [`OEM_LSTM`].
static LEGACY_MISSING: AtomicBool = AtomicBool::new(false);

/// What OCR needs on the host, resolved on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub tesseract: PathBuf,
    /// Only needed for the variants.
    pub magick: Option<Magick>,
}

/// ImageMagick 7 has one `magick` program (nixpkgs runs `magick convert`, the 6-compatible command line);
/// ImageMagick 6, which Debian 12 ships, has `convert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Magick {
    Seven(PathBuf),
    Six(PathBuf),
}

/// Where a preprocessed variant goes: next to the screenshot, as nixpkgs names it (`<stem>.positive.png`,
/// `<stem>.negative.png`).
pub fn variant_path(screenshot: &Path, negate: bool) -> PathBuf {
    let stem = screenshot
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = if negate { "negative" } else { "positive" };
    screenshot.with_file_name(format!("{stem}.{kind}.png"))
}

/// The tesseract command line of nixpkgs: text to stdout, no debug file, page segmentation mode 11 (sparse text,
/// as much as can be found, in no particular order).
pub fn tesseract_argv(tesseract: &Path, image: &Path, oem: u8) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![tesseract.into(), image.into(), "-".into()];
    for arg in [
        "--oem",
        &oem.to_string(),
        "-c",
        "debug_file=/dev/null",
        "--psm",
        "11",
    ] {
        argv.push(arg.into());
    }
    argv
}

/// nixpkgs' preprocessing of a screenshot into `output`, negated or not.
pub fn magick_argv(magick: &Magick, input: &Path, output: &Path, negate: bool) -> Vec<OsString> {
    let mut argv: Vec<OsString> = match magick {
        Magick::Seven(program) => vec![program.into(), "convert".into()],
        Magick::Six(program) => vec![program.into()],
    };
    let mut options = vec![
        "-filter",
        "Catrom",
        "-density",
        "72",
        "-resample",
        "300",
        "-contrast",
        "-normalize",
        "-despeckle",
        "-type",
        "grayscale",
        "-sharpen",
        "1",
        "-posterize",
        "3",
    ];
    if negate {
        options.push("-negate");
    }
    options.extend(["-gamma", "100", "-blur", "1x65535"]);
    argv.extend(options.into_iter().map(OsString::from));
    argv.push(input.into());
    argv.push(output.into());
    argv
}

/// Whether tesseract failed because its language data lacks the legacy engine that `--oem 2` asks for.
pub fn legacy_engine_missing(stderr: &str) -> bool {
    stderr.contains("(legacy) engine requested, but components are not present")
}

/// The first executable file called `name` in the directories of `path` (a `PATH` value).
pub fn find_program(name: &str, path: &OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

impl Tools {
    /// The tools on `path`; an error that names the package when tesseract is missing.
    pub fn find(path: &OsStr) -> OpResult<Tools> {
        let tesseract = find_program("tesseract", path).ok_or_else(|| {
            OpError::Failure(
                "OCR requested but `tesseract` is not available: install it on the host running testrig (Debian: \
                 `apt-get install tesseract-ocr imagemagick`, as tests/env/packages.sh does; Nix: tesseract and \
                 imagemagick on PATH)"
                    .into(),
            )
        })?;
        let magick = find_program("magick", path)
            .map(Magick::Seven)
            .or_else(|| find_program("convert", path).map(Magick::Six));
        Ok(Tools { tesseract, magick })
    }

    fn magick(&self) -> OpResult<&Magick> {
        self.magick.as_ref().ok_or_else(|| {
            OpError::Failure(
                "OCR variants requested but ImageMagick (`magick` or `convert`) is not available: install it on \
                 the host running testrig (Debian: `apt-get install imagemagick`)"
                    .into(),
            )
        })
    }
}

/// Runs one tool to completion within `deadline`; killed if the deadline passes or the future is dropped.
async fn run_tool(argv: &[OsString], deadline: Duration) -> OpResult<std::process::Output> {
    let program = Path::new(&argv[0]).display().to_string();
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Up to three runs share the host at once (two cores here, and the guests'): one thread each, as
        // tesseract's documentation advises for parallel runs, instead of 4 OpenMP threads each.
        .env("OMP_THREAD_LIMIT", "1")
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| OpError::Failure(format!("OCR: cannot start {program}: {e}")))?;
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(OpError::Failure(format!("OCR: waiting for {program}: {e}"))),
        Err(_) => Err(OpError::Timeout(format!(
            "OCR: {program} did not finish within {} s",
            deadline.as_secs()
        ))),
    }
}

fn first_lines(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(5)
        .collect();
    lines.join(" / ")
}

/// Tesseract's text for `image`: nixpkgs' engine mode 2 where the data has the legacy engine, else LSTM only.
pub async fn tesseract(tools: &Tools, image: &Path, deadline: Duration) -> OpResult<String> {
    let mut oem = if LEGACY_MISSING.load(Ordering::Relaxed) {
        OEM_LSTM
    } else {
        OEM_COMBINED
    };
    loop {
        let output = run_tool(&tesseract_argv(&tools.tesseract, image, oem), deadline).await?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        if oem == OEM_COMBINED && legacy_engine_missing(&stderr) {
            LEGACY_MISSING.store(true, Ordering::Relaxed);
            oem = OEM_LSTM;
            continue;
        }
        return Err(OpError::Failure(format!(
            "OCR failed: tesseract exited with {}: {}",
            output.status,
            first_lines(&output.stderr)
        )));
    }
}

/// One preprocessed variant of `screenshot`, then tesseract on it.
async fn variant(tools: &Tools, screenshot: &Path, negate: bool) -> OpResult<String> {
    let magick = tools.magick()?;
    let output_path = variant_path(screenshot, negate);
    let output = run_tool(
        &magick_argv(magick, screenshot, &output_path, negate),
        TOOL_DEADLINE,
    )
    .await?;
    if !output.status.success() {
        return Err(OpError::Failure(format!(
            "OCR: image processing failed: ImageMagick exited with {}: {}",
            output.status,
            first_lines(&output.stderr)
        )));
    }
    tesseract(tools, &output_path, TOOL_DEADLINE).await
}

/// The texts of one image: tesseract on it as it is, and with `variants` also on the positive and the negative
/// preprocessed image, all three at once. The order is fixed (as is, positive, negative); nixpkgs leaves it open.
pub async fn texts_of_image(tools: &Tools, image: &Path, variants: bool) -> OpResult<Vec<String>> {
    if !variants {
        return Ok(vec![tesseract(tools, image, TOOL_DEADLINE).await?]);
    }
    let (raw, positive, negative) = tokio::join!(
        tesseract(tools, image, TOOL_DEADLINE),
        variant(tools, image, false),
        variant(tools, image, true)
    );
    Ok(vec![raw?, positive?, negative?])
}

/// The refusal when the test did not ask for OCR, in nixpkgs' words (its driver's message before 2025, which
/// its own tests expect).
pub const NOT_ENABLED: &str =
    "OCR requested but enableOCR is false (set `enableOCR = true;` in the test)";

impl Machine {
    /// What is on the screen, read by OCR: one text, or with `variants` three (see [`texts_of_image`]).
    pub async fn screen_text(&self, variants: bool) -> OpResult<Vec<String>> {
        let tools = Tools::find(&std::env::var_os("PATH").unwrap_or_default())?;
        let dir = tempfile::Builder::new()
            .prefix("testrig-ocr-")
            .tempdir()
            .map_err(|e| OpError::Failure(format!("OCR: cannot create a temporary dir: {e}")))?;
        let screenshot = dir.path().join("screen.png");
        self.qmp(
            "screendump",
            serde_json::json!({"filename": screenshot, "format": "png"}),
        )
        .await?;
        texts_of_image(&tools, &screenshot, variants)
            .await
            .map_err(|e| match e {
                OpError::Failure(m) => OpError::Failure(format!("{}: {m}", self.name)),
                OpError::Timeout(m) => OpError::Timeout(format!("{}: {m}", self.name)),
                other => other,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(argv: &[OsString]) -> Vec<String> {
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn tesseract_gets_nixpkgs_arguments() {
        let argv = tesseract_argv(
            Path::new("/usr/bin/tesseract"),
            Path::new("/t/screen.png"),
            2,
        );
        assert_eq!(
            strings(&argv),
            [
                "/usr/bin/tesseract",
                "/t/screen.png",
                "-",
                "--oem",
                "2",
                "-c",
                "debug_file=/dev/null",
                "--psm",
                "11"
            ]
        );
        assert_eq!(
            strings(&tesseract_argv(Path::new("t"), Path::new("i"), 1))[4],
            "1"
        );
    }

    #[test]
    fn magick_gets_nixpkgs_preprocessing_with_negate_before_gamma() {
        let six = Magick::Six("/usr/bin/convert".into());
        let positive = strings(&magick_argv(
            &six,
            Path::new("/t/screen.png"),
            Path::new("/t/screen.positive.png"),
            false,
        ));
        assert_eq!(
            positive.join(" "),
            "/usr/bin/convert -filter Catrom -density 72 -resample 300 -contrast -normalize -despeckle -type \
             grayscale -sharpen 1 -posterize 3 -gamma 100 -blur 1x65535 /t/screen.png /t/screen.positive.png"
        );
        let seven = Magick::Seven("/bin/magick".into());
        let negative = strings(&magick_argv(
            &seven,
            Path::new("/t/s.png"),
            Path::new("/t/s.negative.png"),
            true,
        ));
        assert_eq!(&negative[..2], ["/bin/magick", "convert"]);
        assert_eq!(
            negative[negative.len() - 7..].join(" "),
            "-negate -gamma 100 -blur 1x65535 /t/s.png /t/s.negative.png"
        );
    }

    #[test]
    fn variants_are_named_after_the_screenshot() {
        assert_eq!(
            variant_path(Path::new("/t/screen.png"), false),
            Path::new("/t/screen.positive.png")
        );
        assert_eq!(
            variant_path(Path::new("/t/ppm"), true),
            Path::new("/t/ppm.negative.png")
        );
    }

    #[test]
    fn the_missing_legacy_engine_is_recognised() {
        let debian = "Error: Tesseract (legacy) engine requested, but components are not present in \
                      /usr/share/tesseract-ocr/5/tessdata/eng.traineddata!!\nFailed loading language 'eng'\n";
        assert!(legacy_engine_missing(debian));
        assert!(!legacy_engine_missing(
            "Error in pixReadStream: Unknown format: no pix returned\n"
        ));
    }

    fn fake_bin(dir: &Path, name: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn tools_are_found_on_path_and_a_missing_tesseract_names_the_package() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();

        let err = Tools::find(&path).unwrap_err();
        assert!(
            err.to_string().contains("`tesseract` is not available"),
            "{err}"
        );
        assert!(err.to_string().contains("tesseract-ocr"), "{err}");

        // Not executable: not found.
        fake_bin(a.path(), "tesseract", 0o644);
        assert!(Tools::find(&path).is_err());
        fake_bin(b.path(), "tesseract", 0o755);
        fake_bin(b.path(), "convert", 0o755);
        let tools = Tools::find(&path).unwrap();
        assert_eq!(tools.tesseract, b.path().join("tesseract"));
        assert_eq!(tools.magick, Some(Magick::Six(b.path().join("convert"))));

        // ImageMagick 7 wins where both are present.
        fake_bin(a.path(), "magick", 0o755);
        let tools = Tools::find(&path).unwrap();
        assert_eq!(tools.magick, Some(Magick::Seven(a.path().join("magick"))));
    }

    #[tokio::test]
    async fn variants_without_imagemagick_fail_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Tools {
            tesseract: "/bin/true".into(),
            magick: None,
        };
        let err = texts_of_image(&tools, &dir.path().join("x.png"), true)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ImageMagick"), "{err}");
    }

    #[tokio::test]
    async fn a_hung_tool_is_killed_at_its_deadline() {
        let argv: Vec<OsString> = vec!["sleep".into(), "30".into()];
        let err = run_tool(&argv, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "timeout");
        assert!(err.to_string().contains("did not finish within"), "{err}");
    }
}
