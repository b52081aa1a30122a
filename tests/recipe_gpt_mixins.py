"""Our own generation and export tests, for the two mixins that transformers' `test_modeling_common.py`
imports but its source distribution does not carry (see transformers_tests.py). They run inside
transformers' `ModelTesterMixin` test class, on the tester's tiny config and inputs, and check what
transformers' GenerationTesterMixin checks for a decoder-only model: output flags through `generate`
(greedy, sampling, beam search, assisted decoding), cache equivalences, left padding, scores."""

from __future__ import annotations

import copy

import torch


class GenerationTesterMixin:
    max_new_tokens = 3

    def _generative_setups(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        config = copy.deepcopy(config)
        config._attn_implementation = "eager"  # attention weights are only returned by the eager kernel
        for model_class in self.all_generative_model_classes:
            torch.manual_seed(0)
            model = model_class(config).eval()
            yield model, inputs["input_ids"][:2], inputs["attention_mask"][:2]

    def _generate(self, model, input_ids, attention_mask, **kwargs):
        kwargs = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.max_new_tokens, "do_sample": False,
                  "pad_token_id": model.config.pad_token_id, **kwargs}
        return model.generate(input_ids, attention_mask=attention_mask, **kwargs)

    def _check_generate_outputs(self, model, output, prompt_length, num_sequences, num_beams=1):
        config = model.config
        steps = output.sequences.shape[1] - prompt_length
        self.assertEqual(steps, self.max_new_tokens)
        self.assertEqual(len(output.hidden_states), steps)
        self.assertEqual(len(output.attentions), steps)
        for step, (hidden_states, attentions) in enumerate(zip(output.hidden_states, output.attentions)):
            # first step: the whole prompt; then one new position per step (the KV cache holds the rest)
            length = prompt_length if step == 0 else 1
            total = prompt_length + step
            self.assertEqual(len(hidden_states), config.num_hidden_layers + 1)  # embeddings + every layer
            self.assertEqual(len(attentions), config.num_hidden_layers)
            for layer_states in hidden_states:
                self.assertEqual(tuple(layer_states.shape), (num_sequences * num_beams, length, config.hidden_size))
            for layer_attention in attentions:
                self.assertEqual(tuple(layer_attention.shape),
                                 (num_sequences * num_beams, config.num_attention_heads, length, total))
        self.assertEqual(len(output.scores), steps)
        self.assertEqual(len(output.logits), steps)

    def test_greedy_generate_dict_outputs(self):
        for model, input_ids, attention_mask in self._generative_setups():
            output = self._generate(model, input_ids, attention_mask, output_hidden_states=True,
                                    output_attentions=True, output_scores=True, output_logits=True,
                                    return_dict_in_generate=True)
            self._check_generate_outputs(model, output, input_ids.shape[1], input_ids.shape[0])

    def test_sample_generate_dict_outputs(self):
        for model, input_ids, attention_mask in self._generative_setups():
            torch.manual_seed(0)
            output = self._generate(model, input_ids, attention_mask, do_sample=True, output_hidden_states=True,
                                    output_attentions=True, output_scores=True, output_logits=True,
                                    return_dict_in_generate=True)
            self._check_generate_outputs(model, output, input_ids.shape[1], input_ids.shape[0])

    def test_beam_search_generate_dict_outputs(self):
        for model, input_ids, attention_mask in self._generative_setups():
            output = self._generate(model, input_ids, attention_mask, num_beams=2, output_hidden_states=True,
                                    output_attentions=True, output_scores=True, output_logits=True,
                                    return_dict_in_generate=True)
            self.assertEqual(output.sequences.shape[0], input_ids.shape[0])
            self._check_generate_outputs(model, output, input_ids.shape[1], input_ids.shape[0], num_beams=2)

    def test_assisted_decoding_matches_greedy(self):
        # assisted decoding splits the assistant's batched outputs per token (`_split_model_outputs`): it needs
        # hidden states and attentions as tuples of tensors, as transformers' own models return them
        for model, input_ids, attention_mask in self._generative_setups():
            flags = {"output_hidden_states": True, "output_attentions": True, "output_scores": True,
                     "output_logits": True, "return_dict_in_generate": True}
            for row in range(input_ids.shape[0]):  # assisted generation takes batch size 1
                ids, mask = input_ids[row : row + 1], attention_mask[row : row + 1]
                greedy = self._generate(model, ids, mask, **flags)
                assistant = copy.deepcopy(model)
                assisted = self._generate(model, ids, mask, assistant_model=assistant, **flags)
                self.assertEqual(assisted.sequences.tolist(), greedy.sequences.tolist())
                self._check_generate_outputs(model, greedy, ids.shape[1], 1)
                self.assertEqual(len(assisted.hidden_states), self.max_new_tokens)

    def test_greedy_with_and_without_cache_agree(self):
        for model, input_ids, attention_mask in self._generative_setups():
            cached = self._generate(model, input_ids, attention_mask, use_cache=True)
            uncached = self._generate(model, input_ids, attention_mask, use_cache=False)
            self.assertEqual(cached.tolist(), uncached.tolist())

    def test_static_cache_matches_dynamic(self):
        for model, input_ids, attention_mask in self._generative_setups():
            dynamic = self._generate(model, input_ids, attention_mask)
            static = self._generate(model, input_ids, attention_mask, cache_implementation="static")
            self.assertEqual(static.tolist(), dynamic.tolist())

    def test_left_padding_compatibility(self):
        # the last position's logits must not depend on left padding (position_ids follow the attention mask)
        for model, input_ids, attention_mask in self._generative_setups():
            attention_mask = torch.ones_like(input_ids)
            with torch.no_grad():
                plain = model(input_ids, attention_mask=attention_mask).logits[:, -1]
                pad = torch.full((input_ids.shape[0], 4), model.config.pad_token_id or 0, dtype=input_ids.dtype)
                padded_ids = torch.cat([pad, input_ids], dim=1)
                padded_mask = torch.cat([torch.zeros_like(pad), attention_mask], dim=1)
                position_ids = (padded_mask.cumsum(-1) - 1).clamp(min=0)
                padded = model(padded_ids, attention_mask=padded_mask, position_ids=position_ids).logits[:, -1]
            torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-4)

    def test_generate_continues_from_returned_cache(self):
        # generate, then continue from the returned cache: the same tokens as one longer generate
        for model, input_ids, attention_mask in self._generative_setups():
            full = self._generate(model, input_ids, attention_mask, max_new_tokens=4, min_new_tokens=4)
            first = self._generate(model, input_ids, attention_mask, max_new_tokens=2, min_new_tokens=2,
                                   return_dict_in_generate=True)
            cache = first.get("cache", first.get("past_key_values"))
            self.assertIsNotNone(cache)
            mask = torch.cat([attention_mask, torch.ones_like(first.sequences[:, input_ids.shape[1]:])], dim=1)
            cache_key = "cache" if "cache" in first else "past_key_values"
            second = self._generate(model, first.sequences, mask, max_new_tokens=2, min_new_tokens=2,
                                    **{cache_key: cache})
            self.assertEqual(second.tolist(), full.tolist())


class ExportTesterMixin:
    def test_torch_export_matches_eager(self):
        # torch.export traces the causal LM (what ExecuTorch and AOTInductor start from); its logits equal eager
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            torch.manual_seed(0)
            model = model_class(copy.deepcopy(config)).eval()
            kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
            with torch.no_grad():
                eager = model(**kwargs)
                program = torch.export.export(model, args=(), kwargs=kwargs, strict=False)
                exported = program.module()(**kwargs)
            key = "logits" if "logits" in eager else "last_hidden_state"
            torch.testing.assert_close(exported[key], eager[key])
