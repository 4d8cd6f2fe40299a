"""Types shared by the tests (registered once, under their class names)."""

from __future__ import annotations

from pydantic import BaseModel

from flock_llm import flock_type


@flock_type
class Transaction(BaseModel):
    transaction_id: str
    customer_id: str = "c1"
    amount: float = 1.0
    payment_method: str = "card"


@flock_type
class PaymentBatchReport(BaseModel):
    batch_id: str
    transaction_count: int
    total_amount: float


@flock_type
class Order(BaseModel):
    order_id: str
    amount: float


@flock_type
class Event(BaseModel):
    event_id: str
    tenant_id: str


@flock_type
class TenantReport(BaseModel):
    tenant_id: str
    event_ids: list[str]


@flock_type
class TemperatureSensor(BaseModel):
    device_id: str
    celsius: float


@flock_type
class PressureSensor(BaseModel):
    device_id: str
    bar: float


@flock_type
class QualityReport(BaseModel):
    devices: list[str]


@flock_type
class Echo(BaseModel):
    """A per-item output of the test engines."""

    source: str


@flock_type
class CustomerReview(BaseModel):
    review_id: str
    rating: int
    text: str


@flock_type
class SentimentTrendReport(BaseModel):
    review_count: int
    average_rating: float
    summary: str


@flock_type
class ReviewSentiment(BaseModel):
    review_id: str
    label: str
