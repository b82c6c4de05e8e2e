"""Elastic building blocks shared by every supernet; depends on torch only."""

from nasvit.nn.attention import Attention, ElasticAttention, relative_offset_index
from nasvit.nn.batchnorm import recalibrate_batchnorm
from nasvit.nn.blocks import BLOCK_KEY_SCHEMA, BlockSpec
from nasvit.nn.elastic import (
    ElasticBatchNorm2d,
    ElasticConv2d,
    ElasticDepthwiseConv2d,
    ElasticLayerNorm,
    ElasticLayerScale,
    ElasticLinear,
    LayerScale,
)
from nasvit.nn.supernet import Supernet

__all__ = [
    "BLOCK_KEY_SCHEMA",
    "Attention",
    "BlockSpec",
    "ElasticAttention",
    "ElasticBatchNorm2d",
    "ElasticConv2d",
    "ElasticDepthwiseConv2d",
    "ElasticLayerNorm",
    "ElasticLayerScale",
    "ElasticLinear",
    "LayerScale",
    "Supernet",
    "recalibrate_batchnorm",
    "relative_offset_index",
]
