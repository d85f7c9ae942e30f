fn main() {
    guest_build::link();
}
