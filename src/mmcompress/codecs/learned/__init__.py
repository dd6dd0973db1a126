"""Torch-trained codecs, registered as spec tokens of :func:`mmcompress.codecs.make_codec`.

==================  ===================================================================
token               codec
==================  ===================================================================
``QINCO<M>x<b>``    neural residual quantizer (:mod:`.qinco`)
``HASH<bits>``      learned similarity-preserving sign bits (:mod:`.hashing`)
``NSQ<p>x<b>``      distance-preserving learned scalar quantizer with QAT (:mod:`.scalar`)
``MRL<d>[_s<pct>]`` Matryoshka projection, optionally block-pruned (a transform,
                    :mod:`.matryoshka`)
==================  ===================================================================
"""

from mmcompress.codecs.learned.hashing import HASH_PATTERN, LearnedHash, bit_entropy, build_hash
from mmcompress.codecs.learned.matryoshka import MRL_PATTERN, MatryoshkaProjection, build_mrl
from mmcompress.codecs.learned.qinco import (
    QINCO_PATTERN,
    NeuralResidualQuantizer,
    build_qinco,
    qinco_candidates,
)
from mmcompress.codecs.learned.scalar import NSQ_PATTERN, LearnedScalarQuantizer, build_nsq
from mmcompress.codecs.learned.training import (
    TrainConfig,
    TrainingDivergedError,
    TrainResult,
    run_training,
)
from mmcompress.codecs.spec import register_quantizer, register_transform

register_quantizer(QINCO_PATTERN, build_qinco, auto_candidates=qinco_candidates)
register_quantizer(HASH_PATTERN, build_hash)
register_quantizer(NSQ_PATTERN, build_nsq)
register_transform(MRL_PATTERN, build_mrl)

__all__ = [
    "LearnedHash",
    "LearnedScalarQuantizer",
    "MatryoshkaProjection",
    "NeuralResidualQuantizer",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "bit_entropy",
    "run_training",
]
