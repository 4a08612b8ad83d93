"""Bad-input rows for the contact encoder settings (model.contact_model)."""
import pytest

from badinput import Case, check

STABLE = "{root}/configs/stable.yaml"

CASES = [
    Case("contact-model-unknown-arch", ["cmdm.config", STABLE, "model.contact_model.arch=pointnet"],
         names=["model.contact_model.arch", "pointnet"], fix=["point_transformer"]),
    Case("contact-model-token-count", ["cmdm.config", STABLE, "data.contact_num_points=4096"],
         names=["model.condition_embedder.contact_num_tokens", "data.contact_num_points"],
         fix=["model.condition_embedder.contact_num_tokens=64", "model.contact_model.arch=compact"]),
    Case("contact-model-width", ["cmdm.config", STABLE, "model.contact_model.planes=[32,64,128,512]"],
         names=["model.condition_embedder.contact_dim", "model.contact_model.planes"],
         fix=["model.condition_embedder.contact_dim=512"]),
    Case("contact-model-stages", ["cmdm.config", STABLE, "model.contact_model.blocks=[2,2,2]"],
         names=["model.contact_model.blocks"], fix=["blocks=[2,2,2,2]"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    check(case, tmp_path, monkeypatch)
