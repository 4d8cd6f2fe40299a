"""Token planning for LLM engines (pure logic, no I/O): how long an answer is expected to be, learned from real
usage, and how many item tokens a batch may hold (`BatchSpec(max_tokens="auto")`).

    auto budget = context window
                  - fixed prompt tokens (instructions, output schema, the frame of the items message)
                  - answer room (report mode: the expected report, at most the model's output limit;
                    per-item mode: 16, the answer's frame)
                  - 2% of the context window (tokenizer differences, the per-batch line of the items message)

In per-item mode each item's tokens (`LLMEngine.item_tokens`) are its prompt tokens *plus the answer expected for
it*, so a batch under the budget leaves room for its own answers however many items it holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AnswerPlan", "answer_limit", "auto_budget"]
SAFETY = 1.3
"""Expected answers are planned this much longer than the learned average (answers vary)."""
LEARNING_RATE = 0.3
HEADROOM = 2.0
"""A request's `max_tokens` is this many times its expected answer..."""
MIN_HEADROOM = 256
"""...and at least this many tokens more."""


@dataclass
class AnswerPlan:
    """Expected answer tokens: per item (per-item mode) and per report. Starts from the output schema's
    size and follows real usage (an exponential average of complete answers)."""

    per_item: float
    report: float
    learned: int = 0

    @classmethod
    def from_schema_tokens(cls, one_output_tokens: int) -> AnswerPlan:
        """`one_output_tokens`: the tokens of one schema-shaped output (placeholder values)."""
        one = max(8, one_output_tokens)
        return cls(per_item=one * 1.5 + 12, report=max(128.0, one * 3.0))

    def expected(self, items: int, *, per_item: bool) -> int:
        """The answer tokens to plan for `items` items."""
        if per_item:
            return math.ceil(SAFETY * self.per_item * max(1, items)) + 16
        return math.ceil(SAFETY * self.report)

    def item_share(self) -> int:
        """The answer tokens to plan for one item in per-item mode (what it adds to the call besides its prompt)."""
        return math.ceil(SAFETY * self.per_item)

    def typical(self, items: int, *, per_item: bool) -> int:
        """The answer tokens to expect on average (no margin): for estimates of cost."""
        return math.ceil(self.per_item * max(1, items) + 16) if per_item else math.ceil(self.report)

    def learn(self, items: int, completion_tokens: int, *, per_item: bool) -> None:
        """Follow a complete answer's real length (truncated answers say nothing about the full length)."""
        if completion_tokens <= 0 or items <= 0:
            return
        if per_item:
            self.per_item += LEARNING_RATE * (completion_tokens / items - self.per_item)
        else:
            self.report += LEARNING_RATE * (completion_tokens - self.report)
        self.learned += 1

    def learn_cut(self, items: int, limit: int, *, per_item: bool) -> None:
        """An answer was cut off at `limit` tokens: the full one is longer; plan for twice the limit from now on."""
        if per_item:
            self.per_item = max(self.per_item, HEADROOM * limit / max(1, items))
        else:
            self.report = max(self.report, HEADROOM * limit)


def answer_limit(expected: int, *, room: int, max_output: int) -> int:
    """The `max_tokens` of a request whose answer is expected to take `expected` tokens, when the prompt leaves
    `room` tokens of the context (see the module docstring); at least 16."""
    wanted = max(math.ceil(HEADROOM * expected), expected + MIN_HEADROOM)
    return max(16, min(wanted, room, max_output))


def auto_budget(*, context: int, fixed: int, answer_room: int, max_output: int) -> int:
    """The item tokens one batch may hold (see the module's formula); at least 1."""
    room = min(answer_room, max_output)
    return max(1, context - fixed - room - math.ceil(0.02 * context))
