"""invoice-sync: sale-order events from Kafka become invoices and credit notes."""

__version__ = "0.1.0"
