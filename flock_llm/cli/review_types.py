"""The types of the review job: what is read (Review) and what the agent publishes (ReviewTrend, ReviewLabel)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ..registry import flock_type

__all__ = ["NOT_COMPARED", "Review", "ReviewLabel", "ReviewTrend"]


@flock_type(name="Review")
class Review(BaseModel):
    """One customer review."""

    review_id: str
    rating: int = Field(ge=1, le=5)
    text: str


@flock_type(name="ReviewTrend")
class ReviewTrend(BaseModel):
    """What the trend agent publishes for each batch of reviews."""

    review_count: int = Field(description="how many reviews this report covers")
    average_rating: float
    overall_sentiment: Literal["positive", "mixed", "negative"] = Field(description="positive, mixed or negative")
    top_themes: list[str] = Field(description="the most common topics, most frequent first")
    summary: str


@flock_type(name="ReviewLabel")
class ReviewLabel(BaseModel):
    """What the per-item agent publishes for each review."""

    review_id: str
    label: Literal["positive", "neutral", "negative"] = Field(description="positive, neutral or negative")
    reason: str = Field(description="a few words explaining the label")


NOT_COMPARED = ("review_id",)
"""Fields of a label that audits and calibration do not compare by default: the output's `review_id` is the
review's own (`reviews.output_record`), not what the model wrote there, so the model's copy measures nothing a
user gets (a small model wrote a wrong one in 82-100% of its batched answers)."""
