"""The Step Functions patches refuse a moto they were not written against."""

from __future__ import annotations

import moto
import pytest

from localcloud.moto_sfn import MotoVersionError, require_moto_version
from localcloud.moto_version import MOTO_VERSION


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
    assert str(raised.value).startswith(
        f"localcloud.moto_sfn: patches are written against moto 5.2.5, got moto {installed} "
        "(install moto==5.2.5: pip install -r requirements-local.txt;"
    )
