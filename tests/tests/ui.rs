//! Every distinct integration mistake a model author can make with the macros, with the error
//! it gets (`tests/ui/*.stderr`). Regenerate the snapshots with `TRYBUILD=overwrite`.

#[test]
fn macro_errors_teach_the_fix() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/*.rs");
    // What must compile: `crate = path`.
    t.pass("ui/pass/*.rs");
}
