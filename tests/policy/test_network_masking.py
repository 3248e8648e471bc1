import torch

from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork


def _network(conditioning: str = "concat") -> PolicyNetwork:
    torch.manual_seed(0)
    return PolicyNetwork(
        PolicyArchitecture(embedding_dim=8, num_models=4, head_hidden=16, conditioning=conditioning)
    )


def test_masked_arms_get_zero_probability_and_rows_sum_to_one():
    network = _network()
    x = torch.randn(3, 8)
    allowed = torch.tensor([[True, False, True, False], [False, False, False, True], [True] * 4])
    p = network.probabilities(x, torch.tensor([0.0, 0.5, 1.0]), allowed)
    assert torch.all(p[~allowed] == 0)
    assert torch.allclose(p.sum(dim=1), torch.ones(3))
    assert p[1, 3] == 1.0


def test_masked_logits_are_minus_infinity_and_unmasked_unchanged():
    network = _network("film")
    x, w = torch.randn(2, 8), torch.tensor([0.2, 0.9])
    allowed = torch.tensor([[True, True, False, True], [True, False, True, True]])
    masked = network(x, w, allowed)
    plain = network(x, w, None)
    assert torch.isneginf(masked[~allowed]).all()
    assert torch.equal(masked[allowed], plain[allowed])


def test_film_starts_as_identity_of_concat_and_preference_changes_output():
    concat, film = _network("concat"), _network("film")
    film.load_state_dict(
        {**concat.state_dict(), **{k: v for k, v in film.state_dict().items() if k.startswith("film")}}
    )
    x = torch.randn(4, 8)
    w = torch.tensor([0.0, 0.3, 0.6, 1.0])
    assert torch.allclose(concat(x, w), film(x, w))
    assert not torch.allclose(concat(x, torch.zeros(4)), concat(x, torch.ones(4)))
