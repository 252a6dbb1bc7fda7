"""The ``data`` section: where images come from (the synthetic set or url lists) and how they become shards."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenization.download_config import DownloadConfig
from tokenization.shard_encoder import TokenizeConfig
from tokenization.source_config import MixingConfig
from tokenization.synthetic import SyntheticConfig


@dataclass
class DataConfig:
    """Image sources are chosen by ``download.source`` (synthetic, laion, cc3m, or several ``sources``)."""

    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
