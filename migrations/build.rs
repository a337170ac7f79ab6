//! `embed_migrations!` reads the SQL folders at compile time; tell cargo to
//! rebuild when a migration is added or changed.

fn main() {
    println!("cargo:rerun-if-changed=orders");
    println!("cargo:rerun-if-changed=invoices");
}
