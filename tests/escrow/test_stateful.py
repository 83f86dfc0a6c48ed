"""Random call sequences against the running service and a small reference model, checked after every step."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from escrow.amounts import Money, format_micro
from tests.escrow.helpers import body
from tests.support.escrow_server import Agent, EscrowServer

THRESHOLD = 500  # release condition: accuracy >= 0.5 (scores in thousandths)


@dataclass
class ModelHold:
    amount: int
    expires_at: float
    captured: int = 0
    open: bool = True


@dataclass
class ModelEscrow:
    buyer: str
    seller: str
    amount: int
    expires_at: float
    benchmark: bool
    status: str = "active"
    spent: int = 0
    held: int = 0
    refunded: int = 0
    holds: dict[str, ModelHold] = field(default_factory=dict)

    @property
    def remaining(self) -> int:
        return self.amount - self.spent - self.held - self.refunded


def micro_text(micro: int) -> str:
    return format_micro(micro)


class EscrowMachine(RuleBasedStateMachine):
    """The service must accept exactly what the model accepts and end in the model's state."""

    server: EscrowServer  # set by the test

    escrows = Bundle("escrows")
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        s = self.server
        self.referrer = s.register("referrer")
        self.buyers = [s.register("buyer0"), s.register("buyer1")]
        self.sellers = [s.register("seller0", referred_by=self.referrer.referral_code), s.register("seller1")]
        self.agents: dict[str, Agent] = {a.agent_id: a for a in [self.referrer, *self.buyers, *self.sellers]}
        self.balances = {agent_id: 0 for agent_id in self.agents}
        self.faucet_grants: dict[str, list[tuple[float, int]]] = {agent_id: [] for agent_id in self.agents}
        self.model: dict[str, ModelEscrow] = {}
        self.hold_escrow: dict[str, str] = {}

    # ------------------------------------------------------------ helpers

    def now(self) -> float:
        return self.server.clock.now()

    def post(self, agent: Agent, path: str, payload: dict):
        return self.server.call(agent, "POST", path, json=payload, headers={"Idempotency-Key": secrets.token_hex(8)})

    def expect(self, response, status: int, code: str | None = None) -> dict:
        assert response.status_code == status, f"model expected {status} {code}, service said {response.text}"
        payload = response.json()
        if code is not None:
            assert payload["error"]["code"] == code, payload
        return payload

    def settle(self, escrow: ModelEscrow, gross: int) -> None:
        fee = gross // 100
        referral = fee * 15 // 100 if escrow.seller == self.sellers[0].agent_id else 0
        self.balances[escrow.seller] += gross - fee
        if referral:
            self.balances[self.referrer.agent_id] += referral
        escrow.spent += gross

    def return_held(self, escrow: ModelEscrow, amount: int) -> None:
        """A closing hold's rest: back to remaining, or to the buyer once the escrow was released."""
        escrow.held -= amount
        if escrow.status == "released":
            escrow.refunded += amount
            self.balances[escrow.buyer] += amount

    def close_holds(self, escrow: ModelEscrow, only_due: bool) -> None:
        for hold in escrow.holds.values():
            if hold.open and (not only_due or self.now() >= hold.expires_at):
                hold.open = False
                self.return_held(escrow, hold.amount - hold.captured)

    def refund_and_close(self, escrow: ModelEscrow, status: str) -> None:
        refund = escrow.remaining
        escrow.refunded += refund
        self.balances[escrow.buyer] += refund
        escrow.status = status

    def expire_due(self) -> None:
        for escrow in self.model.values():
            if escrow.status == "released":  # holds outlive a release until they expire (never past the escrow)
                self.close_holds(escrow, only_due=True)
            if escrow.status != "active":
                continue
            if self.now() >= escrow.expires_at:
                self.close_holds(escrow, only_due=False)
                self.refund_and_close(escrow, "expired")
            else:
                self.close_holds(escrow, only_due=True)

    def party_refusal(self, caller: Agent, escrow: ModelEscrow, role: str,
                      hold: ModelHold | None = None) -> tuple[int, str] | None:
        if caller.agent_id not in (escrow.buyer, escrow.seller):
            return 404, "not_found"
        if getattr(escrow, role) != caller.agent_id:
            return 403, "forbidden"
        if escrow.status == "released" and hold is not None and hold.open:
            return None  # a release leaves open holds capturable
        if escrow.status != "active":
            return 410, "escrow_closed"
        return None

    # ------------------------------------------------------------ rules

    @initialize()
    def fund(self) -> None:
        for buyer in self.buyers:
            self.server.store.grant(buyer.agent_id, 50_000_000)
            self.balances[buyer.agent_id] += 50_000_000

    @rule(who=st.integers(0, 4), amount=st.integers(1, 40_000_000))
    def faucet(self, who: int, amount: int) -> None:
        agent = [self.referrer, *self.buyers, *self.sellers][who]
        window = [(t, a) for t, a in self.faucet_grants[agent.agent_id] if t > self.now() - 86_400]
        response = self.post(agent, "/faucet", {"amount_usdc": micro_text(amount)})
        if sum(a for _, a in window) + amount > 100_000_000:
            self.expect(response, 429, "rate_limited")
            return
        self.expect(response, 200)
        self.faucet_grants[agent.agent_id].append((self.now(), amount))
        self.balances[agent.agent_id] += amount

    @rule(target=escrows, buyer=st.integers(0, 1), seller=st.integers(0, 1), amount=st.integers(1, 30_000_000),
          ttl=st.sampled_from([5, 60, 600, 3600]), benchmark=st.booleans())
    def create(self, buyer: int, seller: int, amount: int, ttl: int, benchmark: bool):
        b, s = self.buyers[buyer], self.sellers[seller]
        payload = {"seller_id": s.agent_id, "amount_usdc": micro_text(amount), "ttl_seconds": ttl}
        if benchmark:
            payload["release_condition"] = {"type": "benchmark", "metric": "acc", "threshold": "0.5"}
        response = self.post(b, "/escrow", payload)
        if amount > self.balances[b.agent_id]:
            self.expect(response, 409, "insufficient_funds")
            return "esc_" + "0" * 24  # an ID nobody has: later calls on it must be 404
        escrow_id = self.expect(response, 201)["id"]
        self.balances[b.agent_id] -= amount
        self.model[escrow_id] = ModelEscrow(b.agent_id, s.agent_id, amount, self.now() + ttl, benchmark)
        return escrow_id

    @rule(target=holds, escrow_id=escrows, amount=st.integers(1, 10_000_000), ttl=st.sampled_from([1, 30, 120]))
    def hold(self, escrow_id: str, amount: int, ttl: int):
        escrow = self.model.get(escrow_id)
        caller = self.agents[escrow.seller] if escrow else self.sellers[0]
        response = self.post(caller, f"/escrow/{escrow_id}/holds", {"amount_usdc": micro_text(amount), "ttl_seconds": ttl})
        if escrow is None:
            self.expect(response, 404, "not_found")
            return "hold_" + "0" * 24
        refusal = self.party_refusal(caller, escrow, "seller")
        if refusal is None and amount > escrow.remaining:
            refusal = (409, "insufficient_funds")
        if refusal:
            self.expect(response, *refusal)
            return "hold_" + "0" * 24
        hold_id = self.expect(response, 201)["hold_id"]
        escrow.holds[hold_id] = ModelHold(amount, min(self.now() + ttl, escrow.expires_at))
        escrow.held += amount
        self.hold_escrow[hold_id] = escrow_id
        return hold_id

    @rule(hold_id=holds, amount=st.integers(0, 6_000_000), final=st.booleans())
    def capture(self, hold_id: str, amount: int, final: bool) -> None:
        escrow_id = self.hold_escrow.get(hold_id)
        if escrow_id is None or (amount == 0 and not final):
            return
        escrow = self.model[escrow_id]
        hold = escrow.holds[hold_id]
        seller = self.agents[escrow.seller]
        response = self.post(seller, f"/escrow/{escrow_id}/holds/{hold_id}/capture",
                             {"amount_usdc": micro_text(amount), "final": final})
        refusal = self.party_refusal(seller, escrow, "seller", hold)
        if refusal is None and not hold.open:
            refusal = (409, "hold_closed")
        if refusal is None and amount > hold.amount - hold.captured:
            refusal = (409, "exceeds_hold")
        if refusal:
            self.expect(response, *refusal)
            return
        self.expect(response, 200)
        self.settle(escrow, amount)
        hold.captured += amount
        escrow.held -= amount
        if final:
            self.return_held(escrow, hold.amount - hold.captured)
            hold.open = False

    @rule(hold_id=holds)
    def void(self, hold_id: str) -> None:
        escrow_id = self.hold_escrow.get(hold_id)
        if escrow_id is None:
            return
        escrow = self.model[escrow_id]
        hold = escrow.holds[hold_id]
        response = self.post(self.agents[escrow.seller], f"/escrow/{escrow_id}/holds/{hold_id}/void", {})
        refusal = self.party_refusal(self.agents[escrow.seller], escrow, "seller", hold)
        if refusal is None and not hold.open:
            refusal = (409, "hold_closed")
        if refusal:
            self.expect(response, *refusal)
            return
        self.expect(response, 200)
        self.return_held(escrow, hold.amount - hold.captured)
        hold.open = False

    @rule(escrow_id=escrows, amount=st.integers(1, 10_000_000), caller=st.sampled_from(["seller", "buyer", "stranger"]))
    def deduct(self, escrow_id: str, amount: int, caller: str) -> None:
        escrow = self.model.get(escrow_id)
        if escrow is None:
            agent = self.sellers[0]
        else:
            agent = {"seller": self.agents[escrow.seller], "buyer": self.agents[escrow.buyer],
                     "stranger": self.referrer}[caller]
        response = self.post(agent, f"/escrow/{escrow_id}/deduct", {"amount_usdc": micro_text(amount)})
        if escrow is None:
            self.expect(response, 404, "not_found")
            return
        refusal = self.party_refusal(agent, escrow, "seller")
        if refusal is None and amount > escrow.remaining:
            refusal = (409, "insufficient_funds")
        if refusal:
            self.expect(response, *refusal)
            return
        self.expect(response, 200)
        self.settle(escrow, amount)

    @rule(escrow_id=escrows, amount=st.integers(0, 10_000_000), refund_remainder=st.booleans())
    def release(self, escrow_id: str, amount: int, refund_remainder: bool) -> None:
        escrow = self.model.get(escrow_id)
        if escrow is None or (amount == 0 and not refund_remainder):
            return
        buyer = self.agents[escrow.buyer]
        response = self.post(buyer, f"/escrow/{escrow_id}/release",
                             {"amount_usdc": micro_text(amount), "refund_remainder": refund_remainder})
        refusal = self.party_refusal(buyer, escrow, "buyer")
        if refusal is None and amount > escrow.remaining:  # open holds are the seller's, never released
            refusal = (409, "insufficient_funds")
        if refusal:
            self.expect(response, *refusal)
            return
        self.expect(response, 200)
        self.settle(escrow, amount)
        if refund_remainder:
            self.refund_and_close(escrow, "released")

    @rule(escrow_id=escrows, score=st.sampled_from([400, 500, 600]))
    def submit(self, escrow_id: str, score: int) -> None:
        escrow = self.model.get(escrow_id)
        if escrow is None:
            return
        seller = self.agents[escrow.seller]
        response = self.post(seller, f"/escrow/{escrow_id}/submit-result",
                             {"metric": "acc", "score": Decimal(score) / 1000})
        refusal = self.party_refusal(seller, escrow, "seller")
        if refusal is None and not escrow.benchmark:
            refusal = (422, "invalid_request")
        if refusal:
            self.expect(response, *refusal)
            return
        payload = self.expect(response, 200)
        if score >= THRESHOLD:
            assert payload["status"] == "released"
            self.close_holds(escrow, only_due=False)
            self.settle(escrow, escrow.remaining)
            escrow.status = "released"
        else:
            assert payload["status"] == "active"

    @rule(seconds=st.sampled_from([1, 29, 60, 600, 4000, 86_400]))
    def tick(self, seconds: int) -> None:
        self.server.clock.tick(seconds)
        self.expire_due()

    # ------------------------------------------------------------ checks after every step

    @invariant()
    def ledger_matches_the_model(self) -> None:
        self.server.store.check_invariants()
        for escrow_id, escrow in self.model.items():
            got = self.server.get_escrow(self.agents[escrow.buyer], escrow_id)
            assert (got["status"], got["amount_usdc"], got["spent_usdc"], got["held_usdc"], got["remaining_usdc"],
                    got["refunded_usdc"]) == (
                escrow.status, *(Money(v) for v in (escrow.amount, escrow.spent, escrow.held, escrow.remaining,
                                                     escrow.refunded))), escrow_id
            assert min(escrow.spent, escrow.held, escrow.remaining, escrow.refunded) >= 0
        for agent_id, agent in self.agents.items():
            me = body(self.server.call(agent, "GET", "/me"))
            assert me["balance_usdc"] == Money(self.balances[agent_id]), agent_id


@pytest.mark.slow
def test_random_call_sequences_match_the_reference_model(escrow_server):
    EscrowMachine.server = escrow_server
    run_state_machine_as_test(
        EscrowMachine,
        settings=settings(max_examples=20, stateful_step_count=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )
