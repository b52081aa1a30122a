"""How stages make a pipeline: the stage registry (`stages`), the envelope every stage runs in
(`envelope`), running a recipe folder (`runner`) and the report card of a run (`report_card`)."""
