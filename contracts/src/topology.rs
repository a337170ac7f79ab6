//! Names of the broker objects: exchange, queues, routing keys.

/// Topic exchange the relay publishes every event to.
pub const EXCHANGE: &str = "orders";
/// Queue the invoices worker consumes `OrderCreated` events from.
pub const QUEUE_ORDER_CREATED: &str = "invoices.order-created";
/// Exchange that dead-lettered messages of the invoices queue are sent to.
pub const DEAD_LETTER_EXCHANGE: &str = "invoices.dlx";
/// Queue holding dead-lettered messages until an operator looks at them.
pub const DEAD_LETTER_QUEUE: &str = "invoices.order-created.dlq";
/// Deliveries of one message to the invoices queue before the broker dead-letters
/// it (quorum queue `x-delivery-limit`): the end of any redelivery loop.
pub const DELIVERY_LIMIT: i64 = 10;

/// The names of every broker object of the pipeline.
///
/// Production uses [`Topology::default`]. A namespace prefixes every name so that
/// several environments (or parallel test runs) can share one broker without
/// seeing each other's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Topic exchange events are published to.
    pub exchange: String,
    /// Quorum queue of `OrderCreated` events for the invoices worker.
    pub order_created_queue: String,
    /// Exchange dead-lettered messages go to.
    pub dead_letter_exchange: String,
    /// Queue bound to the dead-letter exchange.
    pub dead_letter_queue: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self::namespaced("")
    }
}

impl Topology {
    /// The topology with every name prefixed by `namespace` (`""` for none).
    ///
    /// A non-empty namespace is joined with a dot: `staging` gives `staging.orders`.
    #[must_use]
    pub fn namespaced(namespace: &str) -> Self {
        let name = |base: &str| {
            if namespace.is_empty() {
                base.to_owned()
            } else {
                format!("{namespace}.{base}")
            }
        };
        Self {
            exchange: name(EXCHANGE),
            order_created_queue: name(QUEUE_ORDER_CREATED),
            dead_letter_exchange: name(DEAD_LETTER_EXCHANGE),
            dead_letter_queue: name(DEAD_LETTER_QUEUE),
        }
    }

    /// Routing key the dead-letter exchange routes the invoices queue's messages by.
    #[must_use]
    pub fn dead_letter_routing_key(&self) -> &str {
        &self.order_created_queue
    }

    /// Routing key by which the dead-letter exchange routes a message back to the
    /// invoices queue: `dlq requeue` sends dead letters home this way, so the
    /// worker needs no right to publish to the exchange (and no other queue bound
    /// there gets a second copy).
    #[must_use]
    pub fn requeue_routing_key(&self) -> String {
        format!("{}.requeue", self.order_created_queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_the_documented_ones() {
        let t = Topology::default();
        assert_eq!(t.exchange, "orders");
        assert_eq!(t.order_created_queue, "invoices.order-created");
        assert_eq!(t.dead_letter_exchange, "invoices.dlx");
        assert_eq!(t.dead_letter_queue, "invoices.order-created.dlq");
    }

    #[test]
    fn namespace_prefixes_every_name() {
        let t = Topology::namespaced("t42");
        assert_eq!(t.exchange, "t42.orders");
        assert_eq!(t.order_created_queue, "t42.invoices.order-created");
        assert_eq!(t.dead_letter_exchange, "t42.invoices.dlx");
        assert_eq!(t.dead_letter_queue, "t42.invoices.order-created.dlq");
        assert_eq!(
            t.requeue_routing_key(),
            "t42.invoices.order-created.requeue"
        );
        assert_ne!(t.requeue_routing_key(), t.dead_letter_routing_key());
    }
}
