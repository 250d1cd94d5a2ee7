fn main() {
    println!("pgdeploy");
}
