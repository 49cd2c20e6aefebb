"""Pools in the config (their names and subjects) and the client's router."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from schemas.config import check_pool_name
from worker.errors import ConfigError
from worker.pools import PoolRouter, Route
from worker.service.config import RESERVED_POOL_NAMES, load_config
from worker.storage.audit import stream_names
from worker.storage.journal import stream_name


def config_with(tmp_path: Path, governor: dict[str, object]) -> Path:
    path = tmp_path / "governor.yaml"
    path.write_text(yaml.safe_dump({"governor": governor}))
    return path


class TestPoolConfig:
    def test_a_pool_has_subjects_and_streams_of_its_own(self, tmp_path: Path) -> None:
        config = load_config(config_with(tmp_path, {"pool": "eu-west"}), env={})
        assert config.governor.prefix == "governor.eu-west"
        assert stream_name(config.governor.prefix) == "GOVERNOR_EU_WEST_LEDGER"
        assert stream_names(config.governor.prefix) == ("GOVERNOR_EU_WEST_AUDIT", "GOVERNOR_EU_WEST_REFUSALS")

    def test_no_pool_keeps_the_subject_prefix(self, tmp_path: Path) -> None:
        config = load_config(config_with(tmp_path, {"subject_prefix": "fleet"}), env={})
        assert config.governor.prefix == "fleet"

    def test_the_environment_names_the_pool(self, tmp_path: Path) -> None:
        config = load_config(config_with(tmp_path, {}), env={"IF_GOVERNOR_POOL": "us"})
        assert config.governor.prefix == "governor.us"

    @pytest.mark.parametrize("name", ["EU", "eu_west", "eu.west", "-eu", "eu-", "", "x" * 33])
    def test_names_that_could_collide_are_refused(self, tmp_path: Path, name: str) -> None:
        """No `_` (a stream name turns `-` and `_` alike into `_`), no upper case, no dots: two pools can never
        share a stream or a subject."""
        with pytest.raises(ConfigError, match=r"governor\.pool"):
            load_config(config_with(tmp_path, {"pool": name}), env={})

    @pytest.mark.parametrize("name", sorted(RESERVED_POOL_NAMES))
    def test_the_governors_own_subject_names_are_reserved(self, tmp_path: Path, name: str) -> None:
        with pytest.raises(ConfigError, match="is a name of the governor's own subjects"):
            load_config(config_with(tmp_path, {"pool": name}), env={})

    def test_reserved_names_cover_every_subject_below_the_prefix(self) -> None:
        assert {"assign", "cost", "reset", "status", "events", "witness", "audit", "ledger"} <= RESERVED_POOL_NAMES


class TestRouter:
    router = PoolRouter(
        [Route("eu", tenant="acme-eu"), Route("media", category="media"), Route("gpu", category="ml", tenant="big")],
        default="general",
    )

    def test_first_matching_route_wins(self) -> None:
        assert self.router.pool_for(["media:transcode"], tenant="acme-eu") == "eu"
        assert self.router.pool_for(["code:python", "media:transcode"]) == "media"

    def test_every_condition_of_a_route_must_hold(self) -> None:
        assert self.router.pool_for(["ml:train"], tenant="big") == "gpu"
        assert self.router.pool_for(["ml:train"], tenant="small") == "general"
        assert self.router.pool_for(["mlops:deploy"], tenant="big") == "general"  # a category, not a prefix

    def test_no_default_means_the_unpooled_governor(self) -> None:
        assert PoolRouter([Route("eu", tenant="x")]).pool_for(["a:b"]) is None

    def test_bad_routes_are_refused(self) -> None:
        with pytest.raises(ValueError, match="give a category, a tenant or both"):
            Route("eu")
        with pytest.raises(ValueError, match="expected lower-case letters"):
            Route("EU", tenant="x")
        with pytest.raises(ValueError, match="expected lower-case letters"):
            check_pool_name("eu_west")
