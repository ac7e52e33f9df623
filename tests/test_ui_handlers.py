"""The review UI's logic without Gradio: blind pair order, ratings, image access, logins, leaderboard maths."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from slas.platform.db import open_store
from slas.ui.auth import UIAccessError, is_loopback, load_logins, parse_credentials, require_safe_bind
from slas.ui.handlers import ReviewError, checkpoint_choices, next_pair, pairs_of, rate, reward_rows, undo
from slas.ui.imagefiles import ImageAccessError, checked_path, load_checked, set_roots
from slas.ui.leaderboard import fit_bradley_terry, rater_agreement, reward_agreement, standings

A, B = "base", "run/iter_2"


@pytest.fixture
def store(tmp_path):
    with open_store(f"sqlite:///{tmp_path / 'slas.db'}") as s:
        yield s


@pytest.fixture
def set_id(store, tmp_path):
    from slas.testing.review import make_review_set

    return make_review_set(store, tmp_path / "set", checkpoints=(A, B, "other"), seeds=(0, 1, 2))


def test_each_rater_gets_every_pair_once_in_an_order_of_their_own(store, set_id):
    assert checkpoint_choices(store, set_id) == [A, B, "other"]
    seen, sides = [], []
    while (view := next_pair(store, set_id, A, B, "ann")) is not None:
        assert view.left.prompt == view.right.prompt and view.left.seed == view.right.seed
        assert {view.left_label, view.right_label} == {A, B}
        assert view.position == len(seen) and view.total == 6
        seen.append((view.left.prompt, view.left.seed))
        sides.append(view.left_label == A)
        rate(store, set_id, view.left.id, view.right.id, rater="ann", choice="a")
    assert sorted(seen) == sorted({(p, s) for p in ("a red circle", "two blue squares") for s in (0, 1, 2)})
    assert 0 < sum(sides) < 6  # sides are randomised (fixed by rater and pair: this set gets both)
    assert seen != sorted(seen)  # not in storage order
    first_bob = next_pair(store, set_id, A, B, "bob")  # another rater still has all of them
    assert first_bob is not None and first_bob.position == 0


def test_the_team_covers_unrated_pairs_first_and_skips_come_back_last(store, set_id):
    view = next_pair(store, set_id, A, B, "ann")
    rate(store, set_id, view.left.id, view.right.id, rater="ann", choice="tie")
    for _ in range(5):  # bob's first five pairs are the five ann has not rated
        v = next_pair(store, set_id, A, B, "bob")
        assert {v.left.id, v.right.id} != {view.left.id, view.right.id}
        rate(store, set_id, v.left.id, v.right.id, rater="bob", choice="b")
    last = next_pair(store, set_id, A, B, "bob")
    assert {last.left.id, last.right.id} == {view.left.id, view.right.id}
    again = next_pair(store, set_id, A, B, "cy")
    skipped = next_pair(store, set_id, A, B, "cy", skip=[(again.left.id, again.right.id)])
    assert {skipped.left.id, skipped.right.id} != {again.left.id, again.right.id}


def test_ratings_keep_rater_comment_tags_and_refuse_forged_pairs(store, set_id):
    view = next_pair(store, set_id, A, B, " ann ")
    row = rate(store, set_id, view.left.id, view.right.id, rater=" ann ", choice="both_bad",
               comment="  hands  ", tags=["extra hand", " "])
    (stored,) = store.list_ratings(sample_set_id=set_id)
    assert (stored.id, stored.rater, stored.choice, stored.comment, stored.tags) == (row.id, "ann", "both_bad", "hands", ["extra hand"])
    assert (stored.sample_id, stored.other_sample_id) == (view.left.id, view.right.id)
    with pytest.raises(ReviewError, match="enter your name as rater"):
        rate(store, set_id, view.left.id, view.right.id, rater="  ", choice="a")
    with pytest.raises(ReviewError, match="enter your name as rater"):
        next_pair(store, set_id, A, B, None)
    with pytest.raises(ReviewError, match="unknown choice 'left'"):
        rate(store, set_id, view.left.id, view.right.id, rater="ann", choice="left")
    other = next(s for s in store.list_samples(set_id) if s.prompt != view.left.prompt and s.checkpoint_label == B)
    with pytest.raises(ReviewError, match="are not a pair"):
        rate(store, set_id, view.left.id, other.id, rater="ann", choice="a")
    with pytest.raises(ReviewError, match="not both in sample set"):
        rate(store, set_id, view.left.id, 10_000, rater="ann", choice="a")
    with pytest.raises(ReviewError, match="pick two different checkpoints"):
        pairs_of(store.list_samples(set_id), A, A)
    with pytest.raises(ReviewError, match="checkpoint 'nope' is not in this set"):
        next_pair(store, set_id, A, "nope", "ann")
    assert len(store.list_ratings(sample_set_id=set_id)) == 1


def test_undo_takes_back_only_ones_own_rating_and_shows_the_pair_again(store, set_id):
    first = next_pair(store, set_id, A, B, "ann")
    row = rate(store, set_id, first.left.id, first.right.id, rater="ann", choice="a")
    second = next_pair(store, set_id, A, B, "ann")
    assert second.position == 1
    with pytest.raises(ReviewError, match=f"no rating {row.id} by 'bob' to remove"):
        undo(store, set_id, row.id, rater="bob")
    back = undo(store, set_id, row.id, rater="ann")
    assert (back.left.id, back.right.id, back.position, back.total) == (first.left.id, first.right.id, 0, 6)
    assert store.list_ratings(sample_set_id=set_id) == []
    with pytest.raises(ReviewError, match="no rating"):
        undo(store, set_id, row.id, rater="ann")


def test_editing_pairs_carry_person_and_product(store, tmp_path):
    from slas.testing.review import make_review_set

    sid = make_review_set(store, tmp_path / "edit", editing=True)
    view = next_pair(store, sid, A, B, "ann")
    assert view.is_editing and view.left.person_image.endswith(".png") and view.left.product_image.endswith(".png")
    assert view.left.person_image == view.right.person_image
    roots = set_roots(store.get_sample_set(sid))
    assert load_checked(view.left.person_image, roots).size == (96, 96)
    assert [r[0] for r in reward_rows(view)] == ["aesthetic", "clip"]


def test_images_outside_the_store_folders_are_refused(store, set_id, tmp_path):
    roots = set_roots(store.get_sample_set(set_id))
    inside = store.list_samples(set_id)[0].image_path
    assert checked_path(inside, roots).is_file()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for the page")
    for crafted in (str(secret), f"{tmp_path}/set/../secret.png", "/etc/passwd", "", "a\x00b"):
        with pytest.raises(ImageAccessError, match="refusing image path"):
            checked_path(crafted, roots)
    (tmp_path / "set" / "link.png").symlink_to(secret)  # a link inside that points out
    with pytest.raises(ImageAccessError, match="outside the store's image folders"):
        checked_path(tmp_path / "set" / "link.png", roots)
    # a row pointing out of the store is refused before its pair is shown
    sset = store.create_sample_set("crafted", meta={"out_dir": str(tmp_path / "set")})
    store.add_samples(sset.id, [
        {"checkpoint_label": "x", "prompt": "p", "seed": 0, "image_path": inside},
        {"checkpoint_label": "y", "prompt": "p", "seed": 0, "image_path": str(secret)},
    ])
    with pytest.raises(ImageAccessError, match="outside the store's image folders"):
        next_pair(store, sset.id, "x", "y", "ann")


def test_logins_and_bind_addresses(tmp_path):
    assert load_logins(env={}) is None
    assert load_logins(env={"SLAS_UI_AUTH": "ann:s3cr:et"}) == [("ann", "s3cr:et")]
    for bad in ("ann", "ann:", ":pw"):
        with pytest.raises(UIAccessError, match="SLAS_UI_AUTH: expected user:password"):
            load_logins(env={"SLAS_UI_AUTH": bad})
    creds = tmp_path / "logins"
    creds.write_text("# team\nann:one\n\nbob:two\n")
    assert load_logins(creds, env={"SLAS_UI_AUTH": "x:y"}) == [("ann", "one"), ("bob", "two")]
    with pytest.raises(UIAccessError, match="line 2"):
        parse_credentials("ann:one\nbob\n", "f")
    with pytest.raises(UIAccessError, match="no such file"):
        load_logins(tmp_path / "absent")
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.org")
    require_safe_bind("127.0.0.1", None)
    require_safe_bind("0.0.0.0", [("ann", "one")])
    with pytest.raises(UIAccessError, match=r"refusing to serve the review UI on 0\.0\.0\.0 without logins"):
        require_safe_bind("0.0.0.0", None)


def test_bradley_terry_recovers_known_strengths():
    true = np.log(np.array([4.0, 2.0, 1.0]))
    n = 4000
    expected = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            if i != j:
                expected[i, j] = n * math.exp(true[i]) / (math.exp(true[i]) + math.exp(true[j]))
    fitted = fit_bradley_terry(expected, prior=0.0)
    assert np.allclose(fitted, true - true.mean(), atol=1e-6)
    # a checkpoint that never lost keeps a finite score with the prior
    only = fit_bradley_terry(np.array([[0.0, 3.0], [0.0, 0.0]]))
    assert np.all(np.isfinite(only)) and only[0] > only[1]


def _rating(i, left, right, choice, rater="ann"):
    return SimpleNamespace(id=i, sample_id=left, other_sample_id=right, choice=choice, rater=rater)


def test_standings_reward_and_rater_agreement():
    samples = {
        1: SimpleNamespace(checkpoint_label="x", rewards={"clip": 0.9, "aes": 0.1}),
        2: SimpleNamespace(checkpoint_label="y", rewards={"clip": 0.1, "aes": 0.9}),
        3: SimpleNamespace(checkpoint_label="x", rewards={"clip": 0.5, "aes": 0.5}),
        4: SimpleNamespace(checkpoint_label="y", rewards={"clip": 0.2, "aes": 0.5}),
    }
    ratings = [_rating(1, 1, 2, "a"), _rating(2, 2, 1, "b", "bob"), _rating(3, 3, 4, "a"), _rating(4, 4, 3, "tie", "bob"),
               _rating(5, 1, 2, "both_bad", "cy")]
    rows = standings(ratings, samples, ["x", "y"], n_boot=200, seed=1)
    x, y = rows
    assert x.checkpoint == "x" and x.bt > 0 > y.bt and x.bt == pytest.approx(-y.bt)
    assert (x.comparisons, x.wins, x.losses, x.ties, x.both_bad) == (5, 3, 0, 1, 1)
    assert x.win_rate == pytest.approx(4 / 5) and y.win_rate == pytest.approx(1 / 5)
    assert x.bt_ci[0] <= x.bt <= x.bt_ci[1] and x.win_rate_ci[0] <= x.win_rate <= x.win_rate_ci[1]
    assert standings(ratings, samples, ["x", "y"], n_boot=200, seed=1) == rows  # seeded
    agree = reward_agreement(ratings, samples)
    # decisive ratings: (1 vs 2 -> 1), (2 vs 1 -> 1), (3 vs 4 -> 3); clip prefers 1 and 3; aes prefers 2, ties 3/4
    assert agree["clip"] == (1.0, 3) and agree["aes"] == (0.0, 2)
    ra = rater_agreement(ratings)
    # pair (1,2): ann a, bob b-from-2's-side = 1 wins, cy both_bad -> 3 comparisons, 1 agrees; pair (3,4): a vs tie
    assert (ra["pairs"], ra["comparisons"]) == (2, 4) and ra["agreement"] == pytest.approx(1 / 4)
    assert math.isnan(rater_agreement(ratings[:1])["agreement"])
