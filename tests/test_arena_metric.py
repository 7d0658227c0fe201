import math

import pytest

from arena import arena_line, arena_score, check_arena_results, list_ndcg
from utils import InputError


def g(rank):  # the Arena's gain at a 0-based rank
    return 1 / math.log(rank + 2)


def entry(id, songs, tags):
    return {"id": id, "songs": songs, "tags": tags}


def test_list_ndcg_hand_computed():
    # hits at ranks 0 and 2 of an answer of 3: (g0 + g2) / (g0 + g1 + g2)
    assert math.isclose(list_ndcg([[1, 9, 2, 8]], [[1, 2, 3]], 100)[0], (g(0) + g(2)) / (g(0) + g(1) + g(2)))
    # an answer shorter than the list: the ideal DCG is over the answer's own length (1), so a hit at rank 0 is 1
    assert math.isclose(list_ndcg([[5, 6, 7]], [[5]], 100)[0], 1.0)
    # only the first k recommended count; the answer is not cut at k
    assert list_ndcg([["a", "b"]], [["b"]], 1)[0] == 0.0
    assert math.isclose(list_ndcg([["b", "x"]], [["b", "c", "d"]], 1)[0], g(0) / (g(0) + g(1) + g(2)))
    # rows are independent; string and integer ids; duplicates count at every rank (as the Arena's loop does)
    scores = list_ndcg([[3, 3], ["x"]], [[3], ["y"]], 10)
    assert math.isclose(scores[0], (g(0) + g(1)) / g(0)) and scores[1] == 0.0


def test_arena_score_weights_and_perfect_results():
    songs, tags = list(range(100)), [f"t{i}" for i in range(10)]
    answers = [entry(7, [0, 1], ["t0"]), entry(8, [500], ["zz"])]
    results = [entry(8, songs, tags), entry(7, songs, tags)]
    song, tag, score = arena_score(results, answers)
    assert math.isclose(song, 0.5) and math.isclose(tag, 0.5) and math.isclose(score, 0.5)
    answers[1] = entry(8, [99], ["t9"])
    song, tag, score = arena_score(results, answers)
    assert math.isclose(song, (1 + g(99) / g(0)) / 2) and math.isclose(tag, (1 + g(9) / g(0)) / 2)
    assert math.isclose(score, 0.85 * song + 0.15 * tag)
    assert arena_line(0.12344, 0.5, 1 / 3) == "song nDCG@100 0.1234 tag nDCG@10 0.5000 score 0.3333"


@pytest.mark.parametrize("results, message", [
    ([], "1 question id missing (e.g. 7)"),
    ([entry(7, list(range(100)), list("abcdefghij")), entry(9, list(range(100)), list("abcdefghij"))],
     "1 id not among the questions (e.g. 9)"),
    ([entry(7, list(range(100)), list("abcdefghij"))] * 2, "playlist id 7 appears twice"),
    ([entry(7, list(range(99)), list("abcdefghij"))], "'songs' must be a list of 100 unique values, found 99"),
    ([entry(7, [0] + list(range(99)), list("abcdefghij"))], "found 100 (99 unique)"),
    ([entry(7, list(range(100)), list("abcdefghia"))], "'tags' must be a list of 10 unique values"),
    ([entry(7, list(range(100)), "abcdefghij")], "'tags' must be a list of 10 unique values, found str"),
])
def test_results_refused(results, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_arena_results(results, [7])


def test_empty_answer_refused():
    with pytest.raises(InputError, match="playlist 7 has no tags"):
        arena_score([entry(7, list(range(100)), list("abcdefghij"))], [entry(7, [1], [])])
