//! The minimal configuration the README shows is one the filter accepts.

use std::fs;
use std::path::Path;

#[test]
fn the_readme_minimal_configuration_compiles() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let section = readme.split("\n## A minimal configuration\n").nth(1).expect("the README has the section");
    let json = section.split("```json\n").nth(1).and_then(|rest| rest.split("\n```").next()).expect("a json block");
    if let Err(error) = voxgate_filter::config::load(json.as_bytes()) {
        panic!("the README's configuration is refused: {error}");
    }
}
