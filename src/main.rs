fn main() {
    print!("{}", ferry::api::crds_yaml().expect("CRDs serialize"));
}
