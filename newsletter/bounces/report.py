"""What came back for one issue: bounce/complaint counts and the policy warning.

Policy bounces (the receiver refused *us*) are the sender's problem; past
:data:`POLICY_WARN_SHARE` of an issue's deliveries they deserve a loud warning,
naming the commonest diagnostic so the operator knows what to fix (a blocklist,
DMARC, the sending IP's reputation...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..models import BounceType, Delivery

__all__ = ["POLICY_WARN_SHARE", "IssueBounces", "issue_bounces"]

POLICY_WARN_SHARE = 0.01


@dataclass
class IssueBounces:
    deliveries: int = 0
    by_type: dict[BounceType, int] = field(default_factory=dict)
    commonest_policy: str | None = None

    def count(self, kind: BounceType) -> int:
        return self.by_type.get(kind, 0)

    @property
    def policy_warning(self) -> str | None:
        """The warning to show, or None while policy bounces stay under the threshold."""
        policy = self.count(BounceType.POLICY)
        if not self.deliveries or policy / self.deliveries <= POLICY_WARN_SHARE:
            return None
        share = 100 * policy / self.deliveries
        return (
            f"{policy:,} policy bounce(s) ({share:.1f}% of {self.deliveries:,} deliveries): "
            f"receivers are refusing this sender. Commonest: {self.commonest_policy or 'unknown'}"
        )


def issue_bounces(session: Session, issue_id: int) -> IssueBounces:
    """Counts of later bounces/complaints recorded on the issue's deliveries."""
    out = IssueBounces()
    out.deliveries = int(
        session.scalar(select(func.count()).where(Delivery.issue_id == issue_id)) or 0
    )
    for kind, n in session.execute(
        select(Delivery.bounce_type, func.count())
        .where(Delivery.issue_id == issue_id, Delivery.bounce_type.is_not(None))
        .group_by(Delivery.bounce_type)
    ):
        if kind is not None:
            out.by_type[BounceType(kind)] = int(n)
    if out.count(BounceType.POLICY):
        out.commonest_policy = session.scalar(
            select(Delivery.bounce_text)
            .where(Delivery.issue_id == issue_id, Delivery.bounce_type == BounceType.POLICY)
            .group_by(Delivery.bounce_text)
            .order_by(func.count().desc())
            .limit(1)
        )
    return out
