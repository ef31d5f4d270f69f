//! Reports for other tools: JUnit XML, one testcase per `subtest` (and one for the script as a whole).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::driver::Outcome;
use crate::driver::SubtestRecord;

pub fn write_junit(
    path: &Path,
    test_name: &str,
    outcome: &Outcome,
    duration: Duration,
    subtests: &[SubtestRecord],
) -> std::io::Result<()> {
    let failures = subtests.iter().filter(|s| s.failure.is_some()).count()
        + usize::from(*outcome != Outcome::Passed);
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        xml,
        "<testsuites><testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
        escape(test_name),
        subtests.len() + 1,
        duration.as_secs_f64()
    );
    for subtest in subtests {
        let _ = write!(
            xml,
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            escape(test_name),
            escape(&subtest.name),
            subtest.duration.as_secs_f64()
        );
        if let Some(failure) = &subtest.failure {
            let _ = write!(xml, "<failure message=\"{}\"/>", escape(failure));
        }
        xml.push_str("</testcase>\n");
    }
    let _ = write!(
        xml,
        "  <testcase classname=\"{}\" name=\"test script\" time=\"{:.3}\">",
        escape(test_name),
        duration.as_secs_f64()
    );
    match outcome {
        Outcome::Passed => {}
        Outcome::Failed(message) => {
            let _ = write!(xml, "<failure message=\"{}\"/>", escape(message));
        }
        Outcome::TimedOut(t) => {
            let _ = write!(
                xml,
                "<failure message=\"global timeout of {} seconds reached\"/>",
                t.as_secs()
            );
        }
        Outcome::Interrupted(sig) => {
            let _ = write!(xml, "<failure message=\"interrupted by {sig}\"/>");
        }
    }
    xml.push_str("</testcase>\n</testsuite></testsuites>\n");
    std::fs::write(path, xml)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}
