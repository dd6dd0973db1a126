"""Item catalogs: ids, per-modality matrices with presence masks, attributes."""

from mmcompress.data.catalog import ItemCatalog, ModalitySpec

__all__ = ["ItemCatalog", "ModalitySpec"]
