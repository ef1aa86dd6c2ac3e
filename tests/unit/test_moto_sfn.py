"""The Step Functions patches refuse a moto they were not written against."""

from __future__ import annotations

import moto
import pytest

from localcloud.moto_sfn import MOTO_VERSION, MotoVersionError, require_moto_version


def test_the_pinned_moto_passes() -> None:
    assert moto.__version__ == MOTO_VERSION == "5.2.5"
    require_moto_version()


@pytest.mark.parametrize("installed", ["5.2.6", "5.1.0", "6.0.0.dev0"])
def test_another_moto_is_refused_naming_both_versions(
    monkeypatch: pytest.MonkeyPatch, installed: str
) -> None:
    monkeypatch.setattr(moto, "__version__", installed)
    with pytest.raises(MotoVersionError) as raised:
        require_moto_version()
    assert str(raised.value) == (
        f"localcloud patches moto 5.2.5, but moto {installed} is installed: "
        "install the pinned version (pip install -r requirements-local.txt)"
    )
