"""Protein language models in miniature: synthetic protein families from a Potts model with
planted contacts, masked-language-model batches over their residues, and the pipeline that
reads contacts out of the attention maps.

- `planted_contacts` draws a contact map that looks like a protein's: antiparallel strand
  pairings (ladders of pairs (i + t, j - t)) plus a few random long-range pairs, all at
  sequence separation |i - j| >= 6;
- `random_potts` puts random couplings on those pairs (and nowhere else) and random fields on
  every site: P(s) proportional to exp(sum_i h_i(s_i) + sum_{i<j} J_ij(s_i, s_j));
- `gibbs_sample` draws sequences from it with many chains at once, and
  `PottsModel.conditional_log_probs` gives the best possible prediction of a hidden residue;
- `mlm_batch` masks 15 % of the residues as BERT does (`tutorlib.training.mask_for_mlm`);
- `attention_maps` records every layer's and head's attention of an `EncoderOnly`;
  `symmetrize`, `apc` and `attention_contact_scores` turn them into contact scores, the
  unsupervised pipeline of Rao et al. (2021); `pair_features` lays them out for their
  logistic regression;
- `mutual_information` is the classical baseline (with `apc`, Dunn et al. 2008), and
  `precision_at_k` and `contact_density` score a prediction against the planted map.

Book: 5.8 What a protein language model learns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tutorlib.attention import record_attention_weights
from tutorlib.models import EncoderOnly
from tutorlib.training import mask_for_mlm

__all__ = [
    "AMINO_ACIDS",
    "PottsModel",
    "apc",
    "attention_contact_scores",
    "attention_maps",
    "contact_density",
    "decode",
    "encode",
    "gibbs_sample",
    "mlm_batch",
    "mutual_information",
    "pair_features",
    "planted_contacts",
    "precision_at_k",
    "random_potts",
    "symmetrize",
]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
"""The 20 standard amino acids, one letter each; token id t is AMINO_ACIDS[t]."""


# --- Sequences as tokens -------------------------------------------------------------------------


def encode(sequence: str) -> Tensor:
    """One token per residue, like characters: 'MKV' -> tensor([10, 8, 17]).

    Shapes:
        a string of length L  ->  (L,) int64

    Book: 5.8 What a protein language model learns.
    """
    unknown = sorted(set(sequence) - set(AMINO_ACIDS))
    if unknown:
        raise ValueError(f"not amino-acid letters ({AMINO_ACIDS}): {unknown}")
    return torch.tensor([AMINO_ACIDS.index(c) for c in sequence], dtype=torch.long)


def decode(tokens: Tensor | np.ndarray) -> str:
    """The letters of a 1-D sequence of ids in [0, 20).

    Book: 5.8 What a protein language model learns.
    """
    ids = np.asarray(tokens)
    if ids.ndim != 1 or ids.size and (ids.min() < 0 or ids.max() >= len(AMINO_ACIDS)):
        raise ValueError(f"expected a 1-D sequence of ids in [0, {len(AMINO_ACIDS)})")
    return "".join(AMINO_ACIDS[int(t)] for t in ids)


# --- The Potts model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PottsModel:
    """A Potts model over sequences of length L with q letters:

        log P(s) = sum_i h_i(s_i) + sum_{i<j} J_ij(s_i, s_j) - log Z,

    with fields h (L, q) and couplings J (L, L, q, q) that satisfy J_ij(a, b) = J_ji(b, a)
    and J_ii = 0. `contacts` (L, L) bool, symmetric, marks the pairs with nonzero couplings.

    Book: 5.8 What a protein language model learns.
    """

    fields: np.ndarray  # h, (L, q)
    couplings: np.ndarray  # J, (L, L, q, q), J[i, j, a, b] = J[j, i, b, a]
    contacts: np.ndarray  # (L, L) bool: the pairs (i, j) with J_ij != 0

    def __post_init__(self) -> None:
        h, J, c = self.fields, self.couplings, self.contacts
        if not all(isinstance(x, np.ndarray) for x in (h, J, c)):
            raise TypeError("fields, couplings and contacts must be numpy arrays")
        if h.ndim != 2:
            raise ValueError(f"fields: expected (L, q), got {h.shape}")
        L, q = h.shape
        if J.shape != (L, L, q, q):
            raise ValueError(f"couplings: expected (L, L, q, q) = {(L, L, q, q)}, got {J.shape}")
        if c.shape != (L, L) or c.dtype != bool:
            raise ValueError(f"contacts: expected bool ({L}, {L}), got {c.dtype} {c.shape}")
        if not np.allclose(J, J.transpose(1, 0, 3, 2)):
            raise ValueError("couplings must satisfy J[i, j, a, b] == J[j, i, b, a]")
        if np.abs(J[np.arange(L), np.arange(L)]).max() > 0:
            raise ValueError("couplings J[i, i] of a site with itself must be 0")

    @property
    def length(self) -> int:
        """L, the number of sites (residues)."""
        return self.fields.shape[0]

    @property
    def n_states(self) -> int:
        """q, the number of letters."""
        return self.fields.shape[1]

    def log_weight(self, sequences: np.ndarray) -> np.ndarray:
        """The unnormalised log-probability sum_i h_i(s_i) + sum_{i<j} J_ij(s_i, s_j).

        Shapes:
            sequences (N, L) ints in [0, q)  ->  (N,)
        """
        s = _check_sequences(sequences, self.length, self.n_states)
        sites = np.arange(self.length)
        field_part = self.fields[sites, s].sum(axis=1)  # (N,)
        pair = self.couplings[sites[:, None], sites[None, :], s[:, :, None], s[:, None, :]]
        return field_part + np.triu(pair, k=1).sum(axis=(1, 2))  # (N, L, L) -> (N,)

    def conditional_log_probs(self, sequences: np.ndarray) -> np.ndarray:
        """log P(s_i = a | all the other sites), for every site i and letter a: the best any
        model can do at predicting one hidden residue from all the others.

            P(s_i = a | rest) proportional to exp(h_i(a) + sum_{j != i} J_ij(a, s_j))

        Shapes:
            sequences (N, L) ints in [0, q)  ->  (N, L, q), each (n, i) row a log-softmax
        """
        s = _check_sequences(sequences, self.length, self.n_states)
        one_hot = np.eye(self.n_states)[s]  # (N, L, q)
        logits = self.fields + np.einsum("ijab,njb->nia", self.couplings, one_hot)  # (N, L, q)
        logits -= logits.max(axis=2, keepdims=True)
        return logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))


def _check_sequences(sequences: object, L: int | None, q: int) -> np.ndarray:
    if isinstance(sequences, Tensor):
        sequences = sequences.detach().cpu().numpy()
    if not isinstance(sequences, np.ndarray) or not np.issubdtype(sequences.dtype, np.integer):
        got = sequences.dtype if isinstance(sequences, np.ndarray) else type(sequences).__name__
        raise TypeError(f"sequences must be an integer array of letter ids, got {got}")
    if sequences.ndim != 2 or (L is not None and sequences.shape[1] != L):
        raise ValueError(f"sequences: expected (N, {L or 'L'}), got {sequences.shape}")
    if sequences.size and (sequences.min() < 0 or sequences.max() >= q):
        raise ValueError(f"sequences must hold ids in [0, {q}), got {sequences.min()}..")
    return sequences


def planted_contacts(
    length: int,
    n_strand_pairs: int = 3,
    strand_length: int = 5,
    n_random: int = 4,
    min_separation: int = 6,
    seed: int = 0,
) -> np.ndarray:
    """A contact map shaped like a small protein's.

    Each of the `n_strand_pairs` antiparallel strand pairings puts `strand_length` contacts
    on an anti-diagonal: (i, j), (i + 1, j - 1), ..., as the hydrogen-bonded residues of two
    beta strands joined by a hairpin or a longer loop; then `n_random` single long-range
    pairs are added. Every pair has |i - j| >= `min_separation`, and strands do not overlap,
    so a residue is in at most one strand pairing (a random pair may give it a second
    partner). Deterministic given `seed`.

    Shapes:
        ->  (L, L) bool, symmetric, False on the diagonal

    Book: 5.8 What a protein language model learns.
    """
    for name, value in (("length", length), ("strand_length", strand_length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if 2 * n_strand_pairs * strand_length > length:
        raise ValueError(
            f"{n_strand_pairs} strand pairs of {strand_length} residues do not fit in {length}"
        )
    rng = np.random.default_rng(seed)
    contacts = np.zeros((length, length), dtype=bool)
    used = np.zeros(length, dtype=bool)
    placed = 0
    for _ in range(1000 * max(1, n_strand_pairs)):
        if placed == n_strand_pairs:
            break
        i = int(rng.integers(0, length - strand_length + 1))  # first residue of strand one
        j = int(rng.integers(0, length - strand_length + 1)) + strand_length - 1  # its partner
        one, two = np.arange(i, i + strand_length), np.arange(j, j - strand_length, -1)
        if (
            j < i
            or (two - one).min() < min_separation
            or used[one].any()
            or used[two].any()
            or set(one) & set(two)
        ):
            continue
        contacts[one, two] = contacts[two, one] = True
        used[one] = used[two] = True
        placed += 1
    if placed < n_strand_pairs:
        raise ValueError(f"could not place {n_strand_pairs} strand pairs in length {length}")
    free = [
        (i, j)
        for i in range(length)
        for j in range(i + min_separation, length)
        if not contacts[i, j] and abs(i - j) >= min_separation
    ]
    for k in rng.permutation(len(free))[:n_random]:
        i, j = free[k]
        contacts[i, j] = contacts[j, i] = True
    return contacts


def random_potts(
    contacts: np.ndarray,
    n_states: int = 20,
    coupling: float = 1.0,
    field: float = 1.0,
    seed: int = 0,
) -> PottsModel:
    """A Potts model with random couplings on the planted contacts and nowhere else.

    Fields h_i(a) are drawn N(0, field^2). On each contact (i, j), i < j, the q x q coupling
    block J_ij(a, b) is drawn N(0, coupling^2) entry by entry and J_ji is set to its
    transpose. Deterministic given `seed`.

    Shapes:
        contacts (L, L) bool, symmetric  ->  PottsModel with h (L, q), J (L, L, q, q)

    Book: 5.8 What a protein language model learns.
    """
    contacts = np.asarray(contacts)
    if contacts.dtype != bool or contacts.ndim != 2 or contacts.shape[0] != contacts.shape[1]:
        raise ValueError(
            f"contacts: expected a square bool matrix, got {contacts.dtype} {contacts.shape}"
        )
    if not (contacts == contacts.T).all() or contacts.diagonal().any():
        raise ValueError("contacts must be symmetric with a False diagonal")
    if not isinstance(n_states, int) or n_states < 2:
        raise ValueError(f"n_states must be an int >= 2, got {n_states!r}")
    L, q = contacts.shape[0], n_states
    rng = np.random.default_rng(seed)
    fields = field * rng.standard_normal((L, q))
    couplings = np.zeros((L, L, q, q))
    for i, j in np.argwhere(np.triu(contacts, k=1)):
        block = coupling * rng.standard_normal((q, q))
        couplings[i, j], couplings[j, i] = block, block.T
    return PottsModel(fields, couplings, contacts.copy())


def gibbs_sample(
    model: PottsModel,
    n_chains: int,
    burn_in: int = 50,
    thin: int = 5,
    samples_per_chain: int = 1,
    seed: int = 0,
    initial: np.ndarray | None = None,
) -> np.ndarray:
    """Sequences from a Potts model by Gibbs sampling, `n_chains` independent chains at once.

    One sweep redraws every site from its conditional given the others,
    P(s_i = a | rest) proportional to exp(h_i(a) + sum_j J_ij(a, s_j)), where only the sites
    j coupled to i contribute. Sites that share no coupling are independent given the rest,
    so the sites are coloured (greedily, no two coupled sites alike) and one colour class is
    redrawn at a time, in every chain at once: a systematic-scan Gibbs sampler, vectorised.
    Each chain starts from uniformly random letters (or from the rows of `initial`), runs
    `burn_in` sweeps, then keeps its state every `thin` sweeps, `samples_per_chain` times;
    with burn_in=0 the first state kept is the one after a single sweep. Deterministic given
    `seed`.

    Shapes:
        initial (n_chains, L) or None  ->  (samples_per_chain * n_chains, L) int64: all the
        chains' first kept states, then all their second ones, ...

    Book: 5.8 What a protein language model learns.
    """
    if not isinstance(model, PottsModel):
        raise TypeError(f"model must be a PottsModel, got {type(model).__name__}")
    for name, value, low in (
        ("n_chains", n_chains, 1),
        ("burn_in", burn_in, 0),
        ("thin", thin, 1),
        ("samples_per_chain", samples_per_chain, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    L, q = model.length, model.n_states
    rng = np.random.default_rng(seed)
    coupled = np.abs(model.couplings).sum(axis=(2, 3)) > 0  # (L, L)
    neighbours, blocks = _padded_neighbours(model.couplings, coupled)  # (L, d), (L, d, q, q)
    colours = _colour_classes(coupled)
    if initial is None:
        state = rng.integers(0, q, size=(n_chains, L))  # (N, L)
    else:
        state = _check_sequences(initial, L, q).astype(np.int64)  # a copy, (N, L)
        if len(state) != n_chains:
            raise ValueError(f"initial: expected {n_chains} rows (one per chain), got {len(state)}")
    kept = []
    for sweep in range(burn_in + thin * (samples_per_chain - 1) + 1):
        for sites in colours:  # (n,): no two of them coupled, so they are redrawn together
            nbrs = neighbours[sites]  # (n, d)
            # J[i, j, :, s_j] for each site i, neighbour j and chain: (N, n, d, q)
            pulled = blocks[sites[:, None], np.arange(nbrs.shape[1]), :, state[:, nbrs]]
            logits = model.fields[sites] + pulled.sum(axis=2)  # (N, n, q)
            probs = np.exp(logits - logits.max(axis=2, keepdims=True))  # unnormalised
            cdf = np.cumsum(probs, axis=2)  # (N, n, q)
            u = rng.random((n_chains, len(sites), 1)) * cdf[:, :, -1:]  # (N, n, 1)
            state[:, sites] = np.minimum((cdf < u).sum(axis=2), q - 1)  # inverse-CDF draw
        if sweep >= burn_in and (sweep - burn_in) % thin == 0:
            kept.append(state.copy())
    return np.concatenate(kept).astype(np.int64)


def _padded_neighbours(couplings: np.ndarray, coupled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each site's coupled sites, padded to the largest degree d (at least 1) with site 0 and
    a zero block: neighbours (L, d) and blocks (L, d, q, q) with blocks[i, k] = J[i, j_k]."""
    L, q = couplings.shape[0], couplings.shape[2]
    degree = max(1, int(coupled.sum(axis=1).max()))
    neighbours = np.zeros((L, degree), dtype=np.int64)
    blocks = np.zeros((L, degree, q, q))
    for i in range(L):
        nbrs = np.nonzero(coupled[i])[0]
        neighbours[i, : len(nbrs)] = nbrs
        blocks[i, : len(nbrs)] = couplings[i, nbrs]
    return neighbours, blocks


def _colour_classes(coupled: np.ndarray) -> list[np.ndarray]:
    """A greedy colouring of the coupling graph: sites of one colour share no coupling, so
    given all the other sites they are independent and can be redrawn at the same time."""
    colour = np.full(coupled.shape[0], -1)
    for i in range(coupled.shape[0]):
        taken = set(colour[coupled[i]].tolist())
        colour[i] = next(c for c in range(coupled.shape[0]) if c not in taken)
    return [np.nonzero(colour == c)[0] for c in range(colour.max() + 1)]


# --- Masked-language-model batches ---------------------------------------------------------------


def mlm_batch(
    sequences: Tensor,
    batch_size: int,
    mask_id: int,
    generator: torch.Generator,
    p: float = 0.15,
) -> tuple[Tensor, Tensor]:
    """A random batch of sequences with BERT's corruption (`mask_for_mlm`): each residue is
    selected with probability p; a selected residue becomes `mask_id` 80 % of the time, a
    random amino acid 10 %, and stays 10 %. Labels are the original ids at the selected
    positions and -100 (ignored by the loss) elsewhere.

    Shapes:
        sequences (N, L) int64 ids in [0, mask_id)  ->  inputs (B, L), labels (B, L)

    Book: 5.8 What a protein language model learns.
    """
    if not isinstance(sequences, Tensor) or sequences.dtype != torch.long or sequences.dim() != 2:
        raise TypeError("sequences must be an int64 tensor of shape (N, L)")
    if sequences.numel() and (sequences.min() < 0 or sequences.max() >= mask_id):
        raise ValueError(f"sequences must hold ids in [0, {mask_id}): mask_id is reserved")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    rows = torch.randint(0, len(sequences), (batch_size,), generator=generator)
    tokens = sequences[rows.to(sequences.device)]  # (B, L)
    return mask_for_mlm(tokens, mask_id, mask_id + 1, p=p, generator=generator)


# --- Contacts from attention ---------------------------------------------------------------------


@torch.no_grad()
def attention_maps(model: EncoderOnly, tokens: Tensor) -> Tensor:
    """Every layer's and every head's attention weights for `tokens`, recorded with forward
    hooks that ask each layer's attention for its weights (`need_weights=True`) while the
    model runs as usual (`tutorlib.attention.record_attention_weights`); the hooks
    are removed afterwards. Row t of a map is where position t reads from.

    Shapes:
        tokens (B, T) int64  ->  (B, n_layers, H, T, T), each row summing to 1

    Book: 5.8 What a protein language model learns.
    """
    if not isinstance(model, EncoderOnly):
        raise TypeError(f"model must be an EncoderOnly, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        layers = [layer.self_attn for layer in model.encoder.layers]
        maps = record_attention_weights(layers, lambda: model(tokens))
    finally:
        model.train(was_training)
    return torch.stack(maps, dim=1)  # (B, n_layers, H, T, T)


def _check_square(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    if x.dim() < 2 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"{name}: expected (..., L, L), got {tuple(x.shape)}")
    return x


def symmetrize(x: Tensor) -> Tensor:
    """x + x^T over the last two dimensions: a contact has no direction, attention does.

    Shapes:
        (..., L, L)  ->  (..., L, L)

    Book: 5.8 What a protein language model learns.
    """
    x = _check_square(x, "x")
    return x + x.transpose(-1, -2)


def apc(x: Tensor) -> Tensor:
    """The average product correction of Dunn, Wahl and Gloor (2008):

        APC(i, j) = x(i, .) x(., j) / x(., .),   x_corrected(i, j) = x(i, j) - APC(i, j),

    where x(i, .) is the mean of row i over j != i, x(., j) the mean of column j over i != j,
    and x(., .) the mean of all off-diagonal entries. It removes the part of a score that
    comes from a site's overall level (in attention: a position every head reads from; in
    mutual information: a variable site, or the shared history of the sequences). The
    diagonal is left out of the means and set to 0.

    Shapes:
        (..., L, L)  ->  (..., L, L)

    Book: 5.8 What a protein language model learns.
    """
    x = _check_square(x, "x")
    L = x.shape[-1]
    if L < 3:
        raise ValueError(f"APC needs L >= 3, got {L}")
    off = x * (1 - torch.eye(L, dtype=x.dtype, device=x.device))  # (..., L, L), zero diagonal
    row = off.sum(-1, keepdim=True) / (L - 1)  # (..., L, 1)
    col = off.sum(-2, keepdim=True) / (L - 1)  # (..., 1, L)
    total = off.sum((-1, -2), keepdim=True) / (L * (L - 1))  # (..., 1, 1)
    corrected = off - row * col / total
    return corrected * (1 - torch.eye(L, dtype=x.dtype, device=x.device))


def attention_contact_scores(maps: Tensor) -> Tensor:
    """The unsupervised contact scores of Rao et al. (2021), one map per layer and head:
    symmetrize each attention map, then apply `apc`.

    Shapes:
        maps (..., n_layers, H, L, L)  ->  (..., n_layers * H, L, L)

    Book: 5.8 What a protein language model learns.
    """
    maps = _check_square(maps, "maps")
    if maps.dim() < 4:
        raise ValueError(f"maps: expected (..., n_layers, H, L, L), got {tuple(maps.shape)}")
    return apc(symmetrize(maps.flatten(-4, -3)))  # (..., n_layers * H, L, L)


def pair_features(scores: Tensor, min_separation: int = 6) -> tuple[Tensor, Tensor]:
    """One row per pair i < j with j - i >= `min_separation`, one column per score map: the
    inputs of Rao et al.'s logistic regression.

    Shapes:
        scores (F, L, L)  ->  features (n_pairs, F), pairs (n_pairs, 2) int64 (i, j)

    Book: 5.8 What a protein language model learns.
    """
    scores = _check_square(scores, "scores")
    if scores.dim() != 3:
        raise ValueError(f"scores: expected (F, L, L), got {tuple(scores.shape)}")
    i, j = torch.triu_indices(scores.shape[-1], scores.shape[-1], offset=min_separation)
    return scores[:, i, j].T, torch.stack([i, j], dim=1)  # (n_pairs, F), (n_pairs, 2)


# --- The classical baseline and the score --------------------------------------------------------


def mutual_information(
    sequences: np.ndarray, n_states: int, pseudocount: float = 0.5
) -> np.ndarray:
    """Mutual information between every two columns of a set of aligned sequences:

        MI(i, j) = sum_{a,b} f_ij(a, b) log(f_ij(a, b) / (f_i(a) f_j(b))),

    with frequencies from counts plus `pseudocount` per cell of each pair's q x q table
    (f_i and f_j are its margins, so MI >= 0). The diagonal is 0. Apply `apc` to it for
    Dunn et al.'s MIp.

    Shapes:
        sequences (N, L) ints in [0, q)  ->  (L, L) float64, symmetric

    Book: 5.8 What a protein language model learns.
    """
    s = _check_sequences(sequences, None, n_states)
    if pseudocount < 0:
        raise ValueError(f"pseudocount must be >= 0, got {pseudocount}")
    N, L = s.shape
    q = n_states
    one_hot = np.zeros((N, L * q))
    one_hot[np.arange(N)[:, None], np.arange(L) * q + s] = 1.0
    counts = (one_hot.T @ one_hot).reshape(L, q, L, q).transpose(0, 2, 1, 3)  # (L, L, q, q)
    joint = (counts + pseudocount) / (N + pseudocount * q * q)
    f_i = joint.sum(axis=3, keepdims=True)  # (L, L, q, 1)
    f_j = joint.sum(axis=2, keepdims=True)  # (L, L, 1, q)
    ratio = np.where(joint > 0, joint / np.where(joint > 0, f_i * f_j, 1.0), 1.0)  # 0 log 0 = 0
    mi = (joint * np.log(ratio)).sum(axis=(2, 3))
    np.fill_diagonal(mi, 0.0)
    return mi


def _pair_indices(L: int, min_separation: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(L, k=min_separation)


def precision_at_k(
    scores: Tensor | np.ndarray, contacts: np.ndarray, k: int, min_separation: int = 6
) -> float:
    """The fraction of true contacts among the k highest-scoring pairs i < j with
    j - i >= `min_separation` (ties broken by the order of the pairs, row by row). The
    score is read from the upper triangle; symmetrize first if it is not symmetric.
    Conventionally k = L / 5 (or L, L / 2) for "long-range" or "medium-range" contacts.

    Shapes:
        scores (L, L), contacts (L, L) bool  ->  float in [0, 1]

    Book: 5.8 What a protein language model learns.
    """
    if isinstance(scores, Tensor):
        scores = scores.detach().cpu().double().numpy()
    scores, contacts = np.asarray(scores), np.asarray(contacts)
    L = contacts.shape[0] if contacts.ndim == 2 else -1
    if contacts.dtype != bool or contacts.shape != (L, L) or scores.shape != (L, L):
        raise ValueError(
            f"expected scores (L, L) and bool contacts (L, L), got {scores.shape} and "
            f"{contacts.dtype} {contacts.shape}"
        )
    i, j = _pair_indices(L, min_separation)
    if not isinstance(k, int | np.integer) or not 1 <= k <= len(i):
        raise ValueError(f"k must be an int in [1, {len(i)}] (pairs at that separation), got {k!r}")
    order = np.argsort(-scores[i, j], kind="stable")[:k]
    return float(contacts[i[order], j[order]].mean())


def contact_density(contacts: np.ndarray, min_separation: int = 6) -> float:
    """The fraction of pairs i < j with j - i >= `min_separation` that are contacts: the
    expected precision at any k of a ranking by chance.

    Book: 5.8 What a protein language model learns.
    """
    contacts = np.asarray(contacts)
    i, j = _pair_indices(contacts.shape[0], min_separation)
    return float(contacts[i, j].mean())
