//! The corpus of broken documents: each file's first line says where the error must be
//! reported and what it must say (`# expect: LINE:COL: text`).

use aa_policy::Policy;

use crate::{data_dir, files_ending, read};

#[test]
fn every_broken_document_is_rejected_with_a_located_message() {
    let files = files_ending(&data_dir().join("invalid"), ".yaml");
    assert!(files.len() >= 30, "the corpus is missing");
    let mut wrong = Vec::new();
    for file in &files {
        let source = read(file);
        let expect = source
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an expect line", file.display()));
        let (line, rest) = expect.split_once(':').unwrap();
        let (col, text) = rest.split_once(": ").unwrap();
        let (line, col): (usize, usize) = (line.parse().unwrap(), col.parse().unwrap());
        match Policy::parse(&source) {
            Ok(_) => wrong.push(format!("{}: accepted", file.display())),
            Err(err) => {
                let hit = err
                    .diagnostics()
                    .iter()
                    .any(|d| d.line == line && d.col == col && d.message.contains(text));
                if !hit {
                    wrong.push(format!(
                        "{}: expected {line}:{col}: {text}\n  got: {err}",
                        file.display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
