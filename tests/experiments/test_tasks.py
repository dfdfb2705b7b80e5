"""Generated problems, rewards, the character tokenizer, splits and JSONL loading."""

import collections
import json
import re

import numpy as np
import pytest

from experiments.data import tasks

CELLS = [(family, difficulty) for family in tasks.FAMILIES for difficulty in tasks.DIFFICULTIES]


def _parse_prompt(prompt):
  """Split a generated prompt into its keyword and operand text."""
  match = re.fullmatch(r"([a-z]+) ([0-9 ]+)=", prompt)
  assert match, f"prompt {prompt!r} does not have the form 'keyword operands='"
  return match.group(1), match.group(2)


def _reference_answer(prompt):
  """Compute the answer from the prompt text with Python's own arithmetic."""
  keyword, operands = _parse_prompt(prompt)
  if keyword in ("add", "mul", "mod"):
    first, second = (int(text) for text in operands.split(" "))
    if keyword == "add":
      return str(first + second)
    if keyword == "mul":
      return str(first * second)
    return str(first % second)
  if keyword == "sort":
    return "".join(sorted(operands))
  assert keyword == "dsum", f"unexpected keyword {keyword!r}"
  return str(sum(int(digit) for digit in operands))


def _operand_lengths(family, difficulty):
  """Expected digit counts of the operands at one difficulty."""
  return {"add": [difficulty, difficulty], "mul": [difficulty, 1], "mod": [difficulty + 1, 1],
          "sort": [difficulty + 2], "digitsum": [difficulty + 2]}[family]


@pytest.mark.parametrize("family,difficulty", CELLS)
def test_generated_problems_match_reference(family, difficulty):
  rng = np.random.default_rng(difficulty)
  for _ in range(200):
    problem = tasks.generate_problem(family, difficulty, rng)
    assert problem.family == family
    assert problem.difficulty == difficulty
    assert problem.answer == _reference_answer(problem.prompt), problem
    assert tasks.extract_answer(problem.solution) == problem.answer, problem
    assert tasks.reward(problem.solution, problem.answer) == 1.0, problem
    assert problem.solution.count(tasks.ANSWER_MARKER) == 1, problem
    assert tasks.ANSWER_MARKER not in problem.prompt
    assert len(problem.prompt) <= 16, problem
    assert len(problem.solution) <= 24, problem

    _, operands = _parse_prompt(problem.prompt)
    lengths = [len(text) for text in operands.split(" ")]
    assert lengths == _operand_lengths(family, difficulty), problem
    assert problem.answer == "0" or not problem.answer.startswith("0"), problem


@pytest.mark.parametrize("difficulty", tasks.DIFFICULTIES)
def test_digitsum_trace_lists_running_sums(difficulty):
  rng = np.random.default_rng(7)
  for _ in range(50):
    problem = tasks.generate_problem("digitsum", difficulty, rng)
    _, digits = _parse_prompt(problem.prompt)
    running, sums = 0, []
    for digit in digits[:-1]:
      running += int(digit)
      sums.append(str(running))
    assert problem.solution == ",".join(sums) + ">" + problem.answer


def test_num_problems_counts_distinct_prompts():
  assert tasks.num_problems("add", 1) == 10 * 10
  assert tasks.num_problems("mul", 1) == 10 * 8
  assert tasks.num_problems("sort", 1) == 9 ** 3
  rng = np.random.default_rng(0)
  for family in ("add", "mul"):
    prompts = {tasks.generate_problem(family, 1, rng).prompt for _ in range(3000)}
    assert len(prompts) == tasks.num_problems(family, 1)


def test_generate_problem_rejects_bad_arguments():
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match=r"unknown family 'div'.*'digitsum'"):
    tasks.generate_problem("div", 1, rng)
  with pytest.raises(ValueError, match=r"invalid difficulty 4; expected one of \(1, 2, 3\)"):
    tasks.generate_problem("add", 4, rng)


def test_extract_answer_cases():
  assert tasks.extract_answer("7+5=12 >82") == "82"
  assert tasks.extract_answer(">  82  ") == "82"
  assert tasks.extract_answer(">8 2") == "8 2"
  assert tasks.extract_answer("x>1 >82\nmore text") == "82"
  assert tasks.extract_answer("82") is None
  assert tasks.extract_answer(">") is None
  assert tasks.extract_answer(">   \n82") is None
  assert tasks.extract_answer(">82 >") is None


def test_reward_exact_match():
  assert tasks.reward(">82", "82") == 1.0
  assert tasks.reward("trace >  82 ", "82") == 1.0
  assert tasks.reward(">81", "82") == 0.0
  assert tasks.reward(">082", "82") == 0.0
  assert tasks.reward(">8 2", "82") == 0.0
  assert tasks.reward("82", "82") == 0.0
  assert tasks.reward(">", "82") == 0.0
  assert tasks.reward(">82 >83", "82") == 0.0


def test_reward_unparseable_reference_scores_zero():
  assert tasks.reward(">", "") == 0.0
  assert tasks.reward("> ", " ") == 0.0
  assert tasks.reward(">82 ", "82 ") == 0.0
  assert tasks.reward(">>", ">") == 0.0
  assert tasks.reward(">a\nb", "a\nb") == 0.0
  assert tasks.reward(">None", None) == 0.0


def test_batch_rewards_aligned():
  completions = ["4,4,11>12", "no final answer", ">7", "12", ">1234"]
  answers = ["12", "5", "7", "12", "1234"]
  rewards = tasks.batch_rewards(completions, answers)
  assert rewards.dtype == np.float32
  np.testing.assert_array_equal(rewards, [1.0, 0.0, 1.0, 0.0, 1.0])
  with pytest.raises(ValueError, match="5 completions but 4 answers"):
    tasks.batch_rewards(completions, answers[:4])


def test_canonical_number_forms():
  assert tasks.canonical_number("1,200") == "1200"
  assert tasks.canonical_number(" 1200.0 ") == "1200"
  assert tasks.canonical_number("-3.50") == "-3.5"
  assert tasks.canonical_number(".5") == "0.5"
  assert tasks.canonical_number("-0") == "0"
  assert tasks.canonical_number("1,20") is None
  assert tasks.canonical_number("12a") is None
  assert tasks.canonical_number("") is None


def test_numeric_reward_compares_numbers():
  assert tasks.numeric_reward(">1200", "1,200") == 1.0
  assert tasks.numeric_reward(">1,200", "1200") == 1.0
  assert tasks.numeric_reward(">1200.0", "1200") == 1.0
  assert tasks.numeric_reward(">1201", "1200") == 0.0
  assert tasks.numeric_reward(">twelve", "12") == 0.0
  assert tasks.numeric_reward(">12", "twelve") == 0.0
  assert tasks.numeric_reward(">x", "x") == 0.0
  assert tasks.numeric_reward("1200", "1200") == 0.0


def test_tokenizer_vocabulary():
  tokenizer = tasks.CharTokenizer()
  assert tokenizer.vocab_size == 100
  special = [tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id]
  assert special == [0, 1, 2, 3]
  ids = tokenizer.encode("0123456789abcdefghijklmnopqrstuvwxyz =+*%>,.-\n")
  assert min(ids) >= 4
  assert max(ids) < tokenizer.vocab_size
  assert len(set(ids)) == len(ids)


def test_tokenizer_round_trips_generated_text():
  tokenizer = tasks.CharTokenizer()
  rng = np.random.default_rng(1)
  for family, difficulty in CELLS:
    for _ in range(50):
      problem = tasks.generate_problem(family, difficulty, rng)
      text = problem.prompt + problem.solution
      ids = tokenizer.encode(text)
      assert tokenizer.unk_id not in ids
      assert tokenizer.decode(ids) == text


def test_tokenizer_decode_stops_at_eos():
  tokenizer = tasks.CharTokenizer()
  ids = [tokenizer.bos_id] + tokenizer.encode("12") + [tokenizer.pad_id, tokenizer.eos_id]
  ids += tokenizer.encode("34")
  assert tokenizer.decode(ids) == "12"
  assert tokenizer.decode(np.array(ids, np.int32)) == "12"
  assert tokenizer.decode([]) == ""
  with pytest.raises(ValueError, match="token id 100 is outside"):
    tokenizer.decode([100])
  with pytest.raises(ValueError, match=r"1-D sequence of ids, got shape \(1, 2\)"):
    tokenizer.decode([[4, 5]])


def test_tokenizer_unknown_characters_map_to_unk():
  tokenizer = tasks.CharTokenizer()
  ids = tokenizer.encode("3×4 €")
  assert ids[1] == tokenizer.unk_id
  assert ids[4] == tokenizer.unk_id
  assert tokenizer.decode(ids) == "3\ufffd4 \ufffd"


def test_encode_prompts_pads_after_bos():
  tokenizer = tasks.CharTokenizer()
  prompts = ["add 1 2=", "sort 3142=", "mul 7 3="]
  tokens, lengths = tokenizer.encode_prompts(prompts)
  assert tokens.shape == (3, 11)
  assert tokens.dtype == np.int32
  np.testing.assert_array_equal(lengths, [9, 11, 9])
  np.testing.assert_array_equal(tokens[:, 0], tokenizer.bos_id)
  for row, length, prompt in zip(tokens, lengths, prompts):
    assert tokenizer.decode(row[:length]) == prompt
    np.testing.assert_array_equal(row[length:], tokenizer.pad_id)

  wide, _ = tokenizer.encode_prompts(prompts, length=16)
  assert wide.shape == (3, 16)
  np.testing.assert_array_equal(wide[:, :11], tokens)
  with pytest.raises(ValueError, match=r"prompt 'sort 3142=' takes 11 tokens, more than length=10"):
    tokenizer.encode_prompts(prompts, length=10)
  with pytest.raises(ValueError, match="single string"):
    tokenizer.encode_prompts("add 1 2=")


def test_encode_solutions_lengths_include_eos():
  tokenizer = tasks.CharTokenizer()
  solutions = [">3", "4,4,11>12", ">1234"]
  tokens, lengths = tokenizer.encode_solutions(solutions, length=12)
  assert tokens.shape == (3, 12)
  assert tokens.dtype == np.int32
  np.testing.assert_array_equal(lengths, [3, 10, 6])
  for row, length, solution in zip(tokens, lengths, solutions):
    assert row[length - 1] == tokenizer.eos_id
    assert tokenizer.decode(row) == solution
    np.testing.assert_array_equal(row[length:], tokenizer.pad_id)
  with pytest.raises(ValueError, match=r"solution '4,4,11>12' takes 10 tokens, more than length=9"):
    tokenizer.encode_solutions(solutions, length=9)


def _all_prompts(splits):
  prompts = [p.prompt for p in splits.pool]
  for group in (splits.valid, splits.evaluation):
    for problems in group.values():
      prompts.extend(p.prompt for p in problems)
  return prompts


def test_make_splits_is_deterministic():
  first = tasks.make_splits(pool_size=200, valid_size=12, eval_size=15, seed=3)
  again = tasks.make_splits(pool_size=200, valid_size=12, eval_size=15, seed=3)
  other = tasks.make_splits(pool_size=200, valid_size=12, eval_size=15, seed=4)
  assert first == again
  assert [p.prompt for p in first.pool] != [p.prompt for p in other.pool]
  assert first.evaluation["add"] != other.evaluation["add"]


def test_make_splits_shares_no_prompt():
  splits = tasks.make_splits(pool_size=500, valid_size=30, eval_size=30, seed=0)
  prompts = _all_prompts(splits)
  assert len(prompts) == 500 + 2 * 30 + 5 * 30
  assert len(set(prompts)) == len(prompts)


def test_make_splits_families_and_sizes():
  splits = tasks.make_splits(pool_size=103, valid_size=7, eval_size=8,
                             targeted=("mod", "sort"), seed=0)
  assert splits.targeted == ("mod", "sort")
  assert splits.untargeted == ("add", "mul", "digitsum")
  assert set(splits.valid) == {"mod", "sort"}
  for family, problems in splits.valid.items():
    assert len(problems) == 7
    assert {p.family for p in problems} == {family}
  assert set(splits.evaluation) == set(tasks.FAMILIES)
  for family, problems in splits.evaluation.items():
    assert len(problems) == 8
    assert {p.family for p in problems} == {family}
    assert {p.difficulty for p in problems} == {1, 2, 3}
  assert len(splits.pool) == 103


def test_make_splits_pool_balanced_and_shuffled():
  splits = tasks.make_splits(pool_size=103, valid_size=4, eval_size=4, seed=0)
  family_counts = collections.Counter(p.family for p in splits.pool)
  assert set(family_counts) == set(tasks.FAMILIES)
  assert max(family_counts.values()) - min(family_counts.values()) <= 1
  difficulty_counts = collections.Counter(p.difficulty for p in splits.pool)
  assert max(difficulty_counts.values()) - min(difficulty_counts.values()) <= 5
  # Before the shuffle the pool is grouped by family, with 4 family changes.
  families = [p.family for p in splits.pool]
  changes = sum(a != b for a, b in zip(families, families[1:]))
  assert changes > len(families) // 2


def test_make_splits_evaluation_ignores_sizes():
  small = tasks.make_splits(pool_size=50, valid_size=5, eval_size=20, seed=1)
  large = tasks.make_splits(pool_size=400, valid_size=30, eval_size=20, seed=1,
                            families=("add", "mul", "sort"), targeted=("add",))
  for family in ("add", "mul", "sort"):
    assert small.evaluation[family] == large.evaluation[family]


def test_make_splits_rejects_bad_arguments():
  with pytest.raises(ValueError, match=r"unknown families \['div'\]; expected names from"):
    tasks.make_splits(pool_size=10, valid_size=2, eval_size=2, families=("add", "div"))
  with pytest.raises(ValueError, match=r"unknown targeted families \['sort'\].*\('add', 'mul'\)"):
    tasks.make_splits(pool_size=10, valid_size=2, eval_size=2, families=("add", "mul"),
                      targeted=("sort",))
  with pytest.raises(ValueError, match="targeted families is empty"):
    tasks.make_splits(pool_size=10, valid_size=2, eval_size=2, targeted=())
  with pytest.raises(ValueError, match="single string 'add'"):
    tasks.make_splits(pool_size=10, valid_size=2, eval_size=2, targeted="add")
  with pytest.raises(ValueError, match="contains duplicates"):
    tasks.make_splits(pool_size=10, valid_size=2, eval_size=2, families=("add", "add"),
                      targeted=("add",))
  with pytest.raises(ValueError, match=r"unknown difficulties \[4\]"):
    tasks.make_splits(pool_size=10, valid_size=2, eval_size=2, difficulties=(1, 4))
  for name in ("pool_size", "valid_size", "eval_size"):
    sizes = {"pool_size": 10, "valid_size": 2, "eval_size": 2, name: 0}
    with pytest.raises(ValueError, match=f"invalid {name} 0; expected a positive int"):
      tasks.make_splits(**sizes)


def test_make_splits_too_small_problem_space():
  arguments = dict(families=("add",), targeted=("add",), difficulties=(1,))
  exact = tasks.make_splits(pool_size=94, valid_size=3, eval_size=3, **arguments)
  assert len(set(_all_prompts(exact))) == 100
  with pytest.raises(ValueError, match=r"'add' at difficulty 1 has 100 distinct problems, "
                                       r"fewer than the 101 requested"):
    tasks.make_splits(pool_size=95, valid_size=3, eval_size=3, **arguments)


def _write_lines(path, lines):
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


GSM8K_RECORDS = [
    {"question": "Tom has 3 boxes of 400 pens. How many pens?",
     "answer": "He has 3*400 = <<3*400=1200>>1200 pens.\n#### 1,200"},
    {"question": "  A shirt costs $12 and a hat $8. Total?  ",
     "answer": "12+8 = <<12+8=20>>20\n#### 20"},
    {"question": "Half of 9?", "answer": "#### 4.50"},
]


def test_load_jsonl_gsm8k_records(tmp_path):
  lines = [json.dumps(r) for r in GSM8K_RECORDS]
  path = _write_lines(tmp_path / "train.jsonl", [lines[0], "", lines[1], "   ", lines[2]])
  problems = tasks.load_jsonl(path)
  assert [p.answer for p in problems] == ["1200", "20", "4.5"]
  assert problems[0].prompt == "Tom has 3 boxes of 400 pens. How many pens?\n"
  assert problems[1].prompt == "A shirt costs $12 and a hat $8. Total?\n"
  assert problems[0].solution == "He has 3*400 = 1200 pens. >1200"
  assert problems[1].solution == "12+8 = 20 >20"
  assert problems[2].solution == ">4.5"
  for problem in problems:
    assert problem.family == "jsonl"
    assert problem.difficulty == 0
    assert "<<" not in problem.solution
    assert tasks.extract_answer(problem.solution) == problem.answer
    assert tasks.reward(problem.solution, problem.answer) == 1.0
  assert tasks.numeric_reward(">1,200", problems[0].answer) == 1.0
  assert tasks.numeric_reward(">1200", "1,200") == 1.0
  assert tasks.numeric_reward(">4.50", problems[2].answer) == 1.0


def test_load_jsonl_custom_keys(tmp_path):
  path = _write_lines(tmp_path / "custom.jsonl",
                      [json.dumps({"problem": "1+1?", "solution": "1+1=2\n#### 2"})])
  problems = tasks.load_jsonl(path, question_key="problem", answer_key="solution")
  assert problems == [tasks.Problem("jsonl", 0, "1+1?\n", "2", "1+1=2 >2")]


@pytest.mark.parametrize("bad_line,message", [
    ("{not json", r"line 2: invalid JSON"),
    (json.dumps({"question": "q"}), r"line 2: missing key 'answer'"),
    (json.dumps({"question": "q", "answer": "the answer is 5"}), r"line 2: the answer has no '####'"),
    (json.dumps({"question": "q", "answer": "#### five"}), r"line 2: the final answer 'five' is not a number"),
    (json.dumps({"question": 3, "answer": "#### 5"}), r"line 2: 'question' must be a string"),
    (json.dumps([1, 2]), r"line 2: expected a JSON object, got list"),
])
def test_load_jsonl_rejects_bad_line(tmp_path, bad_line, message):
  path = _write_lines(tmp_path / "bad.jsonl", [json.dumps(GSM8K_RECORDS[0]), bad_line])
  with pytest.raises(ValueError, match=message) as error:
    tasks.load_jsonl(path)
  assert str(path) in str(error.value)


def test_load_jsonl_rejects_empty_file(tmp_path):
  path = _write_lines(tmp_path / "empty.jsonl", ["", "  "])
  with pytest.raises(ValueError, match="contains no records"):
    tasks.load_jsonl(path)


def test_loaded_problems_tokenize(tmp_path):
  path = _write_lines(tmp_path / "train.jsonl", [json.dumps(r) for r in GSM8K_RECORDS])
  tokenizer = tasks.CharTokenizer()
  problems = tasks.load_jsonl(path)
  for problem in problems:
    assert tokenizer.decode(tokenizer.encode(problem.prompt + problem.solution)) == (
        problem.prompt + problem.solution)
  tokens, lengths = tokenizer.encode_solutions([p.solution for p in problems], length=40)
  np.testing.assert_array_equal(lengths, [len(p.solution) + 1 for p in problems])
  assert tokens.shape == (3, 40)
