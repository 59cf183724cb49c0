fn main() {
    println!("atorrent {}", env!("CARGO_PKG_VERSION"));
}
