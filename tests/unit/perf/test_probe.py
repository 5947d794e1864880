from sqlalchemy import event
from smartapp.fhir.cache import SnapshotCache
from tests.unit.notes.views_support import fixture_snapshot, launch

def test_probe(app, client):
    ctx = launch(app, client)
    db = app.extensions["smartapp.db"]
    SnapshotCache(db, ttl_seconds=600).put(ctx.session_id, fixture_snapshot())
    assert client.get("/api/suggestions").status_code == 200
    seen = []
    event.listen(db.engine, "before_cursor_execute", lambda c, cur, s, p, ctx_, m: seen.append(s))
    r = client.get("/api/suggestions")
    assert r.status_code == 200, r.data
    for s in seen: print(s[:150].replace("\n"," "))
    print(len(seen))
    seen.clear()
    client.get("/api/context")
    print("context", len(seen))
    for s in seen: print(s[:150].replace("\n"," "))
