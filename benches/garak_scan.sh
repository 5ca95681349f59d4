#!/usr/bin/env bash
# garak 0.17.1, the field's LLM vulnerability scanner, against `ferrollama serve` on the
# loopback address (OpenAI-compatible chat endpoint, an API key required), with the probe
# families whose detectors need no model from a hub:
#   run 1 (each probe's own detectors, extended ones off): lmrc (sexual content,
#         sexualisation, slur usage, deadnaming, quack medicine, profanity), encoding
#         (base64 / base32 / hex injection), dan (DAN 11.0, AntiDAN, DUDE), promptinject
#         (hijack: hate humans, kill humans, long prompt);
#   run 2: RealToxicityPrompts' seven challenging subsets judged by garak's
#         unsafe_content string detectors (their usual detector is a hub model);
#   run 3: misleading.FalseAssertion judged by misleading.MustRefuteClaimKW.
# Probes that make more than CAP prompts (default 50: encoding, promptinject) are cut to
# CAP, as garak's soft_probe_prompt_cap does; one generation each, at most 128 new tokens,
# temperature 0.7 (garak's default for this generator). The server keeps 8192 positions
# (the default model's context), 2048 per slot, so the long DAN prompts fit. Afterwards the server must
# still answer; its log is searched for panics. Writes benches/results/DATE-garak-scan.md
# (the eval table) and keeps garak's reports in $OUT.
#
#   bash benches/garak_scan.sh [MODEL] [CAP]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-}"
CAP="${2:-50}"
PY="$(bash benches/garak_venv.sh | tail -1)"
GARAK="$(dirname "$PY")/garak"
BIN="${FERROLLAMA_BIN:-target/release/ferrollama}"
[ -x "$BIN" ] || cargo build --release -q
OUT="${OUT:-$HOME/.cache/ferrollama/bench/garak-scan}"
rm -rf "$OUT" && mkdir -p "$OUT"
PORT="${PORT:-18431}"
KEY="garak-scan-$RANDOM$RANDOM"

"$BIN" serve ${MODEL:+--model "$MODEL"} --port "$PORT" --api-key "$KEY" --parallel 4 --ctx 8192 \
  > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/v1/models" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { cat "$OUT/server.log"; exit 1; }
  sleep 1
done

cat > "$OUT/garak.yaml" <<EOF
system:
  parallel_attempts: 4
  lite: true
run:
  seed: 1
  generations: 1
  soft_probe_prompt_cap: $CAP
plugins:
  extended_detectors: false
  generators:
    openai:
      OpenAICompatible:
        uri: http://127.0.0.1:$PORT/v1
        max_tokens: 128
        temperature: 0.7
reporting:
  report_dir: $OUT
EOF

export OPENAICOMPATIBLE_API_KEY="$KEY"
export XDG_DATA_HOME="$OUT/xdg-data" XDG_CACHE_HOME="$OUT/xdg-cache" XDG_CONFIG_HOME="$OUT/xdg-config"
RTP=$(printf 'realtoxicityprompts.RTP%s,' Flirtation Identity_Attack Insult Profanity Severe_Toxicity Sexually_Explicit Threat)
UNSAFE=$(printf 'unsafe_content.%s,' SurgeProfanitySexual SurgeProfanityBodilyFluids \
  SurgeProfanitySexualOrientationGender SurgeProfanityRacialEthnic SurgeProfanityMentalDisability \
  SurgeProfanityPhysicalDisability SurgeProfanityPhysicalAttributes SurgeProfanityAnimalReferences \
  SurgeProfanityReligious SurgeProfanityPolitical OfcomOffensiveGeneral OfcomOffensiveSexual \
  OfcomOffensiveDiscriminatory OfcomOffensiveSexGender OfcomOffensiveMentalHealth \
  OfcomOffensiveRaceEthnic LDNOOBW SlursReclaimedSlurs)
scan() { # name, then garak's arguments
  local name=$1; shift
  local t0=$SECONDS
  "$GARAK" --config "$OUT/garak.yaml" --target_type openai.OpenAICompatible --target_name ferrollama \
    --report_prefix "$name" "$@" > "$OUT/$name.log" 2>&1 || { tail -30 "$OUT/$name.log"; exit 1; }
  echo "$name: $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
}
scan families --probes lmrc.SexualContent,lmrc.Sexualisation,lmrc.SlurUsage,lmrc.Deadnaming,lmrc.QuackMedicine,lmrc.Profanity,encoding.InjectBase64,encoding.InjectBase32,encoding.InjectHex,dan.Dan_11_0,dan.AntiDAN,dan.DUDE,promptinject.HijackHateHumans,promptinject.HijackKillHumans,promptinject.HijackLongPrompt
scan rtp --probes "${RTP%,}" --detectors "${UNSAFE%,}"
scan misleading --probes misleading.FalseAssertion --detectors misleading.MustRefuteClaimKW

alive=no
curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/v1/models" >/dev/null && alive=yes
panics=$(grep -c -i "panicked" "$OUT/server.log" || true)
"$PY" - "$OUT" "$alive" "$panics" "$CAP" <<'PY'
import json, pathlib, sys, datetime
out, alive, panics, cap = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rows, errors = [], 0
for rep in sorted(out.glob("*.report.jsonl")):
    for line in rep.open():
        r = json.loads(line)
        if r.get("entry_type") == "eval":
            rows.append((r["probe"], r["detector"], r["passed"], r["fails"], r.get("nones", 0), r["total_evaluated"]))
        if r.get("entry_type") == "attempt" and r.get("status") == 2:
            errors += sum(1 for o in r.get("outputs", []) if o is None)
times = (out / "times.txt").read_text().split("\n")
lines = [f"# garak 0.17.1 against ferrollama serve ({datetime.date.today()})", "",
         f"Each probe capped at {cap} prompts, one generation each, 128 new tokens, temperature 0.7.",
         f"Server alive afterwards: {alive}; panics in its log: {panics}; empty outputs (failed requests): {errors}.",
         "Times: " + "; ".join(t for t in times if t), "",
         "| probe | detector | passed | failed | total | failure rate |", "|---|---|---:|---:|---:|---:|"]
for p, d, ok, bad, nones, tot in rows:
    lines.append(f"| {p} | {d} | {ok} | {bad} | {tot} | {bad / tot if tot else float('nan'):.3f} |")
text = "\n".join(lines) + "\n"
print(text)
res = pathlib.Path("benches/results") / f"{datetime.date.today()}-garak-scan.md"
res.write_text(text)
sys.exit(0 if alive == "yes" and panics == "0" and errors == 0 else 1)
PY
