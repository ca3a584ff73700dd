DROP TABLE IF EXISTS webhook_event_deliveries;
DROP TABLE IF EXISTS webhook_endpoints;
