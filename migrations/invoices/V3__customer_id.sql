-- Invoices record the customer of their order, from the event's `customer_id`
-- (OrderCreated 1.1). Invoices of events written before orders had customers
-- (1.0, including such events replayed later) have none: NULL.
ALTER TABLE invoices
    ADD COLUMN customer_id text
        CHECK (customer_id IS NULL OR char_length(customer_id) BETWEEN 1 AND 255);

-- The worker's table-level grants (V2) cover the new column.
