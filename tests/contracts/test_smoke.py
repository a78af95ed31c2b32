from promptex.chain.providers import TOKEN_UNIT, USD_MICRO


def test_open_lot__tokenized__mints_face_value_over_token_value(escrow, cld, seller, treasury, open_lot):
    lot_id = open_lot(seller, cld)
    minted = 10_000 * USD_MICRO * TOKEN_UNIT // 4_218
    assert cld.balanceOf(seller) + cld.balanceOf(treasury) == minted
    assert escrow.lots(lot_id).capacity == minted
