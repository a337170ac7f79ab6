//! The order domain: parsing requests into valid orders ("parse, don't validate").

pub mod amount;
pub mod order;

pub use amount::{Amount, AmountError};
pub use order::{CreateOrderRequest, NewOrder, Order};
