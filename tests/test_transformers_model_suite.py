"""transformers' own common model tests (`ModelTesterMixin`) run against RecipeGPT the way
transformers tests Llama: a tester that builds a tiny config and inputs, and a test class over the base
model and the causal LM. The machinery is fetched at test time from the source distribution of the
installed transformers release (transformers_tests.py); the generation and export mixins that the
distribution lacks are our own tests (recipe_gpt_mixins.py). Skipped where the registry is unreachable and
nothing is cached. Counts and skip reasons: docs/architecture.md "transformers' model tests"."""

from __future__ import annotations

import importlib
import unittest

import pytest
from transformers_tests import load

PACKAGE, WHERE = load()
if PACKAGE is None:
    pytest.skip(WHERE, allow_module_level=True)

import torch  # noqa: E402
from recipe_gpt_mixins import GenerationTesterMixin  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402

import llm_recipes  # noqa: E402,F401  (registers the model with the Auto classes)
from llm_recipes.model import RecipeGPTConfig, RecipeGPTForCausalLM, RecipeGPTModel  # noqa: E402

common = importlib.import_module(f"{PACKAGE}.test_modeling_common")


class RecipeGPTModelTester:
    """The sizes transformers' causal-LM tester uses for Llama (batch 13 x 7 tokens, vocab 99, 2 layers of
    width 32), with grouped-query attention (4 query heads over 2 key/value heads)."""

    def __init__(self, parent, batch_size=13, seq_length=7, is_training=True, use_input_mask=True, use_labels=True,
                 vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=37, max_position_embeddings=512, initializer_range=0.02, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_input_mask = use_input_mask
        self.use_labels = use_labels
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def get_config(self) -> RecipeGPTConfig:
        return RecipeGPTConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size, max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range, pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs(self):
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        input_mask = torch.tril(torch.ones_like(input_ids)) if self.use_input_mask else None
        labels = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size) if self.use_labels else None
        return self.get_config(), input_ids, input_mask, labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, input_mask, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": input_mask}


class RecipeGPTModelTest(common.ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (RecipeGPTModel, RecipeGPTForCausalLM)
    # transformers' tests tell a base model from a causal LM by looking the class name up in its Auto tables
    # (`MODEL_MAPPING_NAMES`, `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`): a model outside transformers is in none, so
    # `test_training` would ask the base model for a loss, labels would never be made for the causal LM, and
    # the RoPE-scaling tests would find no base model. For this class only, our two classes are entered in those
    # tables the way an in-tree model is listed; nothing else of the tests is changed.
    auto_table_entries = (
        (modeling_auto.MODEL_MAPPING_NAMES, RecipeGPTModel.__name__),
        (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, RecipeGPTForCausalLM.__name__),
    )

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for table, class_name in cls.auto_table_entries:
            table[RecipeGPTConfig.model_type] = class_name

    @classmethod
    def tearDownClass(cls):
        for table, _ in cls.auto_table_entries:
            table.pop(RecipeGPTConfig.model_type, None)
        super().tearDownClass()

    def setUp(self):
        self.model_tester = RecipeGPTModelTester(self)
