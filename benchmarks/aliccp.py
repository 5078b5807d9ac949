"""The Ali-CCP-sized configuration of the benchmarks (AITM protocol, ../shared/data/ali-ccp/PROVENANCE.md):
18 single-valued fields with AITM's vocabulary sizes, embedding dim 5, towers [128, 64, 32], 2 tasks."""
import torch

AITM_VOCAB = {"101": 238635, "121": 98, "122": 14, "124": 3, "125": 8, "126": 4, "127": 4, "128": 3, "129": 5,
              "205": 467298, "206": 6929, "207": 263942, "216": 106399, "508": 5888, "509": 104830,
              "702": 51878, "853": 37148, "301": 4}
FIELD_DIMS = tuple(AITM_VOCAB.values())
EMBED_DIM = 5
TOWER_DIMS = (128, 64, 32)


def zipf_ids(batch: int, seed: int = 0, exponent: float = 1.05, device="cpu") -> torch.Tensor:
    """Ids [batch, 18] with Zipf-like popularity per field (repeats within a batch, as in real logs)."""
    gen = torch.Generator().manual_seed(seed)
    cols = []
    for n in FIELD_DIMS:
        weights = 1.0 / torch.arange(1, n + 1, dtype=torch.float64) ** exponent
        cols.append(torch.multinomial(weights, batch, replacement=True, generator=gen))
    return torch.stack(cols, dim=1).to(device)


HOT_FIELDS = ("124", "128")  # fields of 3 values, made hot by hot_ids


def hot_ids(batch: int, seed: int = 0, device="cpu") -> torch.Tensor:
    """zipf_ids with hot rows: field 124 takes one value in every sample (one run of the whole batch in the
    fused update) and field 128 two values, alternately (two runs of batch / 2)."""
    ids = zipf_ids(batch, seed)
    names = list(AITM_VOCAB)
    ids[:, names.index(HOT_FIELDS[0])] = 0
    ids[:, names.index(HOT_FIELDS[1])] = torch.arange(batch) % 2
    return ids.to(device)


def cascade_labels(batch: int, seed: int = 0, device="cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    click = (torch.rand(batch, generator=gen) < 0.2).float()
    buy = click * (torch.rand(batch, generator=gen) < 0.2).float()
    return torch.stack([click, buy], dim=1).to(device)
