from model_training.text import CharVocab, normalize_text


def test_normalize_text_superb_charset() -> None:
    text = "Hello, world! It's  long-term café."
    assert normalize_text(text) == "HELLO WORLD IT'S LONG TERM CAFE"
    assert normalize_text("'quoted' 42 —") == "QUOTED"


def test_vocab_has_blank_plus_28_characters_and_round_trips() -> None:
    vocab = CharVocab()
    assert len(vocab) == 29 and vocab.blank_id == 0 and vocab.tokens[vocab.word_sep_id] == "|"
    ids = vocab.encode("It's a test")
    assert vocab.blank_id not in ids
    assert vocab.decode(ids) == "IT'S A TEST"
    assert CharVocab.from_config(vocab.to_config()) == vocab
