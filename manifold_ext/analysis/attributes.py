"""KL attribute analysis of a recognition manifold (paper 000 §4.3).

§4.3 asks which attributes a recognition network's embedding organises its
neighbourhoods by: insert labelled samples into the embedding, find every
sample's nearest neighbour there, and for each attribute compare

* p(x_a): the distribution of attribute a over the whole set, with
* p(x_a | x_a(nn) = v): its distribution over the samples whose nearest
  neighbour has value v (the paper uses v = 0 for binary attributes),

by the KL divergence KL(p(x_a | x_a(nn) = v) || p(x_a)) (the information that
knowing the neighbour's value gives about the sample's; natural log, nats).
Attributes with a large KL structure the manifold's neighbourhoods; a KL near
the chance level means the embedding ignores the attribute. Reported per
attribute: the KL for every neighbour value v, the paper's KL at v = 0, the
expected KL sum_v p(x_a(nn) = v) KL(...) (the mutual information between an
attribute and its neighbour's; the default ranking), and a chance baseline:
the same statistic with the nearest neighbour replaced by a random other sample
(its mean over ``baseline_draws`` draws: finite samples give a small positive KL
even when neighbours are unrelated).

Attributes are integer codes ``[N, A]`` (binary 0/1 or categorical 0..K-1).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from manifold_ext._training import train_loop


@dataclasses.dataclass
class AttributeKL:
    """The KL analysis of one attribute."""

    name: str
    marginal: list[float]  # p(x_a = k), k = 0..K-1
    conditional: dict[int, list[float]]  # v -> p(x_a = k | x_a(nn) = v)
    kl_given_neighbour: dict[int, float]  # v -> KL(p(x_a | nn = v) || p(x_a))
    kl_at_zero: float  # the paper's KL at v = 0
    expected_kl: float  # sum_v p(nn = v) KL_v
    chance_expected_kl: float  # the same with random neighbours
    neighbour_agreement: float  # P(x_a = x_a(nn))
    chance_agreement: float  # sum_k p(x_a = k)^2


@dataclasses.dataclass
class AttributeKLReport:
    attributes: list[AttributeKL]  # ranked, largest ``rank_by`` first
    rank_by: str
    num_samples: int

    def table(self) -> str:
        """A markdown table, ranked."""
        lines = [
            "| rank | attribute | KL at nn = 0 | expected KL (MI) | chance | P(same as nn) | chance |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for rank, row in enumerate(self.attributes, 1):
            lines.append(
                f"| {rank} | {row.name} | {row.kl_at_zero:.4f} | {row.expected_kl:.4f} | "
                f"{row.chance_expected_kl:.4f} | {row.neighbour_agreement:.3f} | {row.chance_agreement:.3f} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "rank_by": self.rank_by,
            "num_samples": self.num_samples,
            "attributes": [dataclasses.asdict(row) for row in self.attributes],
        }


def nearest_neighbours(embeddings: torch.Tensor, metric: str = "euclidean", chunk: int = 4096) -> torch.Tensor:
    """Index of every row's nearest other row, ``[N]`` int64 (ties: the smaller index).

    ``metric``: ``"euclidean"`` or ``"cosine"`` (Euclidean on L2-normalised rows, FaceNet's hypersphere).
    Works in chunks of rows, so memory is ``chunk x N``.
    """
    if embeddings.dim() != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"nearest_neighbours: embeddings must be [N >= 2, E], got shape {list(embeddings.shape)}")
    if not torch.isfinite(embeddings).all():
        raise ValueError("nearest_neighbours: embeddings must be finite")
    if metric == "cosine":
        embeddings = F.normalize(embeddings, dim=1)
    elif metric != "euclidean":
        raise ValueError(f"nearest_neighbours: unknown metric {metric!r}; expected 'euclidean' or 'cosine'")
    data = embeddings.detach().to(torch.float64)
    out = torch.empty(data.shape[0], dtype=torch.int64)
    for start in range(0, data.shape[0], chunk):
        block = data[start : start + chunk]
        distances = torch.cdist(block, data)
        rows = torch.arange(block.shape[0])
        distances[rows, rows + start] = math.inf  # never one's own neighbour
        out[start : start + block.shape[0]] = distances.argmin(1).cpu()
    return out


def _distribution(values: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(values, minlength=k).to(torch.float64) / max(values.numel(), 1)


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """KL(p || q) with 0 log 0 = 0 (q > 0 wherever p > 0 here: p's support is inside q's)."""
    mask = p > 0
    return float((p[mask] * (p[mask] / q[mask]).log()).sum())


def _expected_kl(values: torch.Tensor, neighbour_values: torch.Tensor, k: int, marginal: torch.Tensor):
    per_value, conditional = {}, {}
    expected = 0.0
    for v in range(k):
        chosen = neighbour_values == v
        count = int(chosen.sum())
        if count == 0:
            continue
        cond = _distribution(values[chosen], k)
        conditional[v] = cond
        per_value[v] = _kl(cond, marginal)
        expected += count / values.numel() * per_value[v]
    return expected, per_value, conditional


def attribute_kl(
    embeddings: torch.Tensor,
    attributes: torch.Tensor,
    names: list[str] | None = None,
    *,
    metric: str = "euclidean",
    rank_by: str = "expected_kl",
    baseline_draws: int = 20,
    seed: int = 0,
) -> AttributeKLReport:
    """The §4.3 KL table: attributes ranked by how much the embedding's nearest neighbour tells about them.

    Args:
        embeddings: ``[N, E]`` recognition-manifold coordinates of the samples.
        attributes: ``[N, A]`` integer attribute codes (0/1 or 0..K-1).
        names: ``A`` attribute names (default ``attr0``, ...).
        metric: nearest neighbours by ``"euclidean"`` or ``"cosine"`` distance.
        rank_by: ``"expected_kl"`` (default), ``"kl_at_zero"`` (the paper's Fig. 17b) or ``"neighbour_agreement"``.
        baseline_draws: random-neighbour draws for the chance level.
    """
    if not isinstance(attributes, torch.Tensor) or attributes.dim() != 2:
        got = list(attributes.shape) if isinstance(attributes, torch.Tensor) else type(attributes).__name__
        raise ValueError(f"attribute_kl: attributes must be an [N, A] integer tensor, got {got}")
    if attributes.is_floating_point() or attributes.dtype == torch.bool:
        if attributes.dtype == torch.bool or torch.equal(attributes, attributes.round()):
            attributes = attributes.long()
        else:
            raise ValueError("attribute_kl: attributes must be integer codes (0/1 or 0..K-1), got non-integer values")
    attributes = attributes.long().cpu()
    if (attributes < 0).any():
        raise ValueError("attribute_kl: attribute codes must be >= 0")
    if embeddings.dim() != 2 or embeddings.shape[0] != attributes.shape[0]:
        raise ValueError(
            f"attribute_kl: embeddings must be [N, E] with N = {attributes.shape[0]} (the attributes' rows), "
            f"got shape {list(embeddings.shape)}"
        )
    n, num_attributes = attributes.shape
    names = list(names) if names is not None else [f"attr{i}" for i in range(num_attributes)]
    if len(names) != num_attributes:
        raise ValueError(f"attribute_kl: {len(names)} names for {num_attributes} attributes")
    if rank_by not in ("expected_kl", "kl_at_zero", "neighbour_agreement"):
        raise ValueError(
            f"attribute_kl: unknown rank_by {rank_by!r}; expected 'expected_kl', 'kl_at_zero' or 'neighbour_agreement'"
        )
    if baseline_draws < 1:
        raise ValueError(f"attribute_kl: baseline_draws must be >= 1, got {baseline_draws}")
    neighbours = nearest_neighbours(embeddings, metric)
    generator = torch.Generator().manual_seed(seed)
    random_neighbours = []
    for _ in range(baseline_draws):  # a uniformly random *other* sample
        offset = torch.randint(1, n, (n,), generator=generator)
        random_neighbours.append((torch.arange(n) + offset) % n)
    rows = []
    for a, name in enumerate(names):
        values = attributes[:, a]
        k = int(values.max()) + 1
        marginal = _distribution(values, k)
        expected, per_value, conditional = _expected_kl(values, values[neighbours], k, marginal)
        chance = sum(_expected_kl(values, values[r], k, marginal)[0] for r in random_neighbours) / baseline_draws
        rows.append(
            AttributeKL(
                name=name,
                marginal=marginal.tolist(),
                conditional={v: c.tolist() for v, c in conditional.items()},
                kl_given_neighbour=per_value,
                kl_at_zero=per_value.get(0, float("nan")),
                expected_kl=expected,
                chance_expected_kl=chance,
                neighbour_agreement=float((values == values[neighbours]).double().mean()),
                chance_agreement=float(marginal.square().sum()),
            )
        )
    rows.sort(key=lambda row: -getattr(row, rank_by) if not math.isnan(getattr(row, rank_by)) else math.inf)
    return AttributeKLReport(attributes=rows, rank_by=rank_by, num_samples=n)


# ---------------------------------------------------------------------------
# A small recognition network trained by supervised contrastive learning
# ---------------------------------------------------------------------------
class EmbeddingNet(nn.Module):
    """An MLP from images ``[B, *shape]`` to L2-normalised embeddings ``[B, dim]`` (a hypersphere, as FaceNet)."""

    def __init__(self, in_features: int, dim: int = 16, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def supervised_contrastive_loss(
    embeddings: torch.Tensor, identities: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """SupCon (Khosla et al. 2020): for each anchor, -mean log softmax similarity of its same-identity samples."""
    similarity = embeddings @ embeddings.T / temperature
    n = embeddings.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    similarity = similarity.masked_fill(self_mask, -math.inf)
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positives = (identities[:, None] == identities[None, :]) & ~self_mask
    counts = positives.sum(1)
    has_positive = counts > 0
    mean_log_prob = (log_prob.masked_fill(~positives, 0.0)).sum(1)[has_positive] / counts[has_positive]
    return -mean_log_prob.mean()


def train_embedding(
    images: torch.Tensor,
    identities: torch.Tensor,
    dim: int = 16,
    hidden: int = 256,
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 2e-3,
    temperature: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    augment=None,
) -> tuple[EmbeddingNet, list[float]]:
    """Fit an :class:`EmbeddingNet` so that images of one identity cluster (supervised contrastive learning).

    ``augment`` (optional) maps a batch of images to a randomly altered copy before it is embedded.
    """
    if images.shape[0] != identities.shape[0]:
        raise ValueError(f"train_embedding: {images.shape[0]} images but {identities.shape[0]} identities")
    torch.manual_seed(seed)  # the network's initialisation; minibatches come from train_loop's seeded generator
    model = EmbeddingNet(images[0].numel(), dim, hidden).to(images.device)

    def step_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, images.shape[0], (min(batch_size, images.shape[0]),), generator=generator).to(
            images.device
        )
        batch = images[index] if augment is None else augment(images[index])
        return supervised_contrastive_loss(model(batch), identities[index], temperature)

    losses = train_loop(
        model.parameters(), step_loss, steps=steps, lr=lr, seed=seed, desc="training embedding", progress=progress
    ).loss
    return model.eval(), losses
