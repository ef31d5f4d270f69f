//! Copying a dir's contents into another (the cached outputs of a test into the user's `-o` dir).

use std::path::Path;

/// Copies everything under `from` into `to` (created if missing), replacing files of the same name and keeping
/// symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for item in std::fs::read_dir(from)? {
        let item = item?;
        let kind = item.file_type()?;
        let target = to.join(item.file_name());
        if kind.is_dir() {
            copy_tree(&item.path(), &target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(item.path())?;
            match std::fs::remove_file(&target) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::os::unix::fs::symlink(link, &target)?;
        } else {
            std::fs::copy(item.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_nested_files_and_links_over_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("a.png"), "new").unwrap();
        std::fs::write(from.join("sub/b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("a.png", from.join("link")).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(to.join("a.png"), "old").unwrap();
        std::fs::write(to.join("keep"), "k").unwrap();
        copy_tree(&from, &to).unwrap();
        copy_tree(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(to.join("a.png")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(to.join("sub/b.txt")).unwrap(), "b");
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            Path::new("a.png")
        );
        assert!(to.join("keep").exists());
    }
}
