//! Debugging aid: prints tree-sitter-c's syntax tree of a C file.
fn main() {
    let path = std::env::args().nth(1).expect("usage: sexp FILE.c");
    let src = std::fs::read_to_string(&path).unwrap();
    let mut p = tree_sitter::Parser::new();
    p.set_language(&tree_sitter_c::LANGUAGE.into()).unwrap();
    let t = p.parse(&src, None).unwrap();
    println!("{}", t.root_node().to_sexp());
}
