"""Real services on loopback, started and stopped by tests, benchmarks and the demo
(:mod:`jointcal_ap.services.kafka`: the tansu Kafka broker)."""
