"""``supervisor/coord/offloop.py``: the way back from the threads to the loop."""

from __future__ import annotations

import threading

from supervisor.coord.offloop import Answers


def test_answers_wake_the_loop_and_come_back_in_order():
    woken = []
    answers: Answers[int] = Answers(lambda: woken.append(1))
    answers.put(1)
    answers.put(2)
    assert len(answers) == 2 and len(woken) == 2
    assert answers.take() == [1, 2]
    assert answers.take() == [] and len(answers) == 0


def test_a_failing_wake_loses_no_answer():
    def broken() -> None:
        raise OSError("the wake-up pipe is full")

    answers: Answers[str] = Answers(broken)
    answers.put("kept")
    assert answers.take() == ["kept"]


def test_many_threads_put_while_the_loop_takes():
    answers: Answers[tuple[int, int]] = Answers()
    taken: list[tuple[int, int]] = []

    def worker(n: int) -> None:
        for i in range(2000):
            answers.put((n, i))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        taken += answers.take()
    taken += answers.take()
    assert len(taken) == 8000
    for n in range(4):  # each thread's answers in the order it put them
        assert [i for m, i in taken if m == n] == list(range(2000))
