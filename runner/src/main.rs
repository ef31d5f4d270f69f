fn main() {
    println!("testrig");
}
