fn main() {
    println!("elx: under construction");
}
