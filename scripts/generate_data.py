"""Generate a logged-dialogue dataset from a recipe in ``conf/data/``.

Examples::

    python scripts/generate_data.py                                  # data=guess_which, cached under root
    python scripts/generate_data.py data=guess_which data.n_train=1000
    python scripts/generate_data.py out_dir=/tmp/gw num_workers=2    # write exactly there

Without ``out_dir`` the dataset goes to ``<root>/<env-name>-<key>/`` and is reused when
it already exists with the same recipe (``dialogue_rl.data.ensure_dataset``), which is
where training runs look for it. The ``data`` group is typed by
``dialogue_rl.data.DataConfig``: an unknown key or a wrong type fails before any work.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from dialogue_rl.cli import guard, run_cli
from dialogue_rl.config import ConfigError
from dialogue_rl.data import DataConfig, ensure_dataset, generate_and_save, load_metadata

log = logging.getLogger("generate_data")


@dataclass
class GenerateDataConfig:
    """Schema of ``conf/generate_data.yaml``."""

    data: DataConfig = MISSING
    out_dir: Optional[str] = None  # write here (replacing what is there); default: cache under root
    root: str = "data"  # dataset cache root (relative to the launch directory)
    num_workers: Optional[int] = None  # overrides data.num_workers when set


_cs = ConfigStore.instance()
_cs.store(name="generate_data_schema", node=GenerateDataConfig)
_cs.store(group="data", name="data_schema", node=DataConfig)  # recipes may list `defaults: [data_schema]`


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate_data")
@guard
def main(cfg: DictConfig) -> None:
    container: Any = OmegaConf.to_container(cfg.data, resolve=True)
    if cfg.num_workers is not None:
        container["num_workers"] = int(cfg.num_workers)
    try:
        data_cfg = DataConfig.from_dict(container)
    except ValueError as e:
        raise ConfigError(f"data: {e} (conf/data/*.yaml or a data.* override)") from None
    t0 = time.perf_counter()
    path = generate_and_save(data_cfg, cfg.out_dir) if cfg.out_dir else ensure_dataset(data_cfg, cfg.root)
    seconds = time.perf_counter() - t0
    meta = load_metadata(path)
    counts = ", ".join(f"{name}: {info['num_rows']} rows" for name, info in meta["splits"].items())
    log.info("dataset %s (%s) at %s", meta.get("env_id"), counts, path.resolve())
    log.info("done in %.1fs (generation %s s, workers %d)", seconds, meta.get("generation_s", "n/a"),
             data_cfg.num_workers)
    for name, info in meta["splits"].items():
        stats = info["returns"]["overall"]
        log.info("%s: return %.3f +- %.3f, success %.3f", name, stats["mean"], stats["std"], info["success_rate"])


if __name__ == "__main__":
    sys.exit(run_cli(main))
