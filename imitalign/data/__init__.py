"""Data: rows → records → token ids → batches (DESIGN.md, "One path for the data")."""

from imitalign.data.collate import collate_demos, collate_pairs, collate_prompts, pad_id_for
from imitalign.data.dataset import DataReport, DataSplits, SplitReport, build_datasets, load_split, validate_data
from imitalign.data.formats import FORMATS, ParseStats, parse_rows
from imitalign.data.preview import preview
from imitalign.data.records import DataError, DemonstrationRecord, Message, PreferenceRecord, PromptRecord, Record
from imitalign.data.sources import iter_rows
from imitalign.data.templates import Renderer, TemplateError
from imitalign.data.tokenize import (
    TokenizedDemo,
    TokenizedPair,
    TokenizedPrompt,
    TokenizeNote,
    tokenize_demo,
    tokenize_pair,
    tokenize_prompt,
    tokenize_records,
)

__all__ = [
    "FORMATS",
    "DataError",
    "DataReport",
    "DataSplits",
    "DemonstrationRecord",
    "Message",
    "ParseStats",
    "PreferenceRecord",
    "PromptRecord",
    "Record",
    "Renderer",
    "SplitReport",
    "TemplateError",
    "TokenizeNote",
    "TokenizedDemo",
    "TokenizedPair",
    "TokenizedPrompt",
    "build_datasets",
    "collate_demos",
    "collate_pairs",
    "collate_prompts",
    "iter_rows",
    "load_split",
    "pad_id_for",
    "parse_rows",
    "preview",
    "tokenize_demo",
    "tokenize_pair",
    "tokenize_prompt",
    "tokenize_records",
    "validate_data",
]
