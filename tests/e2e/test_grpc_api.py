"""tandemd's gRPC API through Python grpcio: Generate (streaming), Tokenize, Models.List, error
codes, the standard health service and server reflection."""
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import MODEL_NAME


@pytest.fixture(scope="module")
def channel(daemon):
    with grpc.insecure_channel(daemon.grpc_target) as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        yield ch


def test_generate_streams_and_matches_http(channel, grpc_stubs, client):
    pb2, pb2_grpc = grpc_stubs
    stub = pb2_grpc.GenerationStub(channel)
    req = pb2.GenerateRequest(model=MODEL_NAME, text="The capital of France is", max_tokens=12,
                              temperature=0.0)
    responses = list(stub.Generate(req, timeout=120))
    text = "".join(d.text for r in responses for d in r.choices)
    tokens = [t for r in responses for d in r.choices for t in d.token_ids]
    assert responses[-1].usage.completion_tokens == len(tokens) == 12
    assert responses[-1].usage.total_tokens == responses[-1].usage.prompt_tokens + 12
    http = client.completions.create(model=MODEL_NAME, prompt="The capital of France is",
                                     max_tokens=12, temperature=0)
    assert text == http.choices[0].text


def test_generate_chat_with_n(channel, grpc_stubs):
    pb2, pb2_grpc = grpc_stubs
    stub = pb2_grpc.GenerationStub(channel)
    req = pb2.GenerateRequest(
        model=MODEL_NAME, max_tokens=6, n=2, temperature=1.0, seed=3,
        chat=pb2.Conversation(messages=[pb2.ChatMessage(role="user", content="Hi!")]))
    indices = {d.index for r in stub.Generate(req, timeout=120) for d in r.choices}
    assert indices == {0, 1}


def test_generate_errors_map_to_status_codes(channel, grpc_stubs):
    pb2, pb2_grpc = grpc_stubs
    stub = pb2_grpc.GenerationStub(channel)
    cases = [
        (pb2.GenerateRequest(model=MODEL_NAME, text="x", temperature=9.0),
         grpc.StatusCode.INVALID_ARGUMENT),
        (pb2.GenerateRequest(model="nope", text="x"), grpc.StatusCode.NOT_FOUND),
        (pb2.GenerateRequest(model=MODEL_NAME, text="x", max_tokens=100000),
         grpc.StatusCode.OUT_OF_RANGE),
        (pb2.GenerateRequest(model=MODEL_NAME), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for req, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Generate(req, timeout=60))
        assert e.value.code() == code, (req, e.value)


def test_tokenize_and_models(channel, grpc_stubs):
    pb2, pb2_grpc = grpc_stubs
    t = pb2_grpc.GenerationStub(channel).Tokenize(
        pb2.TokenizeRequest(model=MODEL_NAME, text="Hello world"), timeout=30)
    assert len(t.token_ids) > 0 and t.max_model_len == 8192
    models = pb2_grpc.ModelsStub(channel).List(pb2.ListModelsRequest(), timeout=30)
    assert [m.id for m in models.models] == [MODEL_NAME]


def test_health_service(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(list_services="")
    resp = next(stub.ServerReflectionInfo(iter([req]), timeout=10))
    names = {s.name for s in resp.list_services_response.service}
    assert {"tandem.v1.Generation", "tandem.v1.Models", "grpc.health.v1.Health"} <= names


def test_grpc_calls_are_counted(daemon, channel, grpc_stubs):
    pb2, pb2_grpc = grpc_stubs
    before = daemon.metrics().get('tandem:requests_total{api="grpc",status="NOT_FOUND"}', 0)
    with pytest.raises(grpc.RpcError):
        list(pb2_grpc.GenerationStub(channel).Generate(pb2.GenerateRequest(model="x", text="y"),
                                                      timeout=30))
    pb2_grpc.ModelsStub(channel).List(pb2.ListModelsRequest(), timeout=30)
    m = daemon.metrics()
    assert m['tandem:requests_total{api="grpc",status="NOT_FOUND"}'] == before + 1
    assert m['tandem:requests_total{api="grpc",status="OK"}'] >= 1
