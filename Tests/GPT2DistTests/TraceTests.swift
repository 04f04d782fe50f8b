import Foundation
import Testing

/// `train --trace-steps` through the release binary at np 2: trace.json is valid Chrome trace JSON with one process per
/// rank; each traced step's compute-track spans add up to the step's measured time within 5%; gradient buckets run on
/// the communication track while backward runs; ZeRO-1's all-gathers appear; bad ranges are one line.
@Suite(.serialized) struct TraceTests {
    @Test(arguments: [false, true]) func traceCoversEveryStepOnEveryRank(zero: Bool) throws {
        let dir = tmpDir("trace")
        let cfg = try writeConfig(dir, dropRate: 0.1)
        // A model whose backward takes long enough (tens of ms) for buckets to run while it does.
        let wide = dir + "/wide.json"
        try #"{"vocab_size": 512, "context_length": 64, "emb_dim": 192, "n_heads": 4, "n_layers": 4, "drop_rate": 0.1, "qkv_bias": true}"#
            .write(toFile: wide, atomically: true, encoding: .utf8)
        let out = dir + "/run"
        let r = try CLI.run(ranks: 2, trainArgs(config: wide, out: out, steps: 5,
                                                 extra: ["--trace-steps", "3-4", "--bucket-mb", "0.05"] + (zero ? ["--zero", "1"] : [])))
        #expect(r.status == 0, "\(r.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/trace.json"))) as? [String: Any]
        let events = try #require(json?["traceEvents"] as? [[String: Any]])
        struct Span { let pid: Int, tid: Int, name: String, cat: String, start: Double, end: Double, args: [String: Any] }
        // Buckets from hand-off to completion: async begin/end pairs by id.
        // (ZeRO-1's all-gathers are handed off after the update and land during the next forward: left out.)
        var handOff: [Int: (pid: Int, start: Double)] = [:], lifetimes: [(pid: Int, start: Double, end: Double)] = []
        for e in events where !(e["name"] as? String ?? "").hasPrefix("all-gather") {
            guard let id = e["id"] as? Int, let pid = e["pid"] as? Int, let ts = e["ts"] as? Double else { continue }
            if e["ph"] as? String == "b" { handOff[id] = (pid, ts) } else if e["ph"] as? String == "e", let b = handOff[id] { lifetimes.append((pid, b.start, ts)) }
        }
        let spans = events.compactMap { e -> Span? in
            guard e["ph"] as? String == "X", let pid = e["pid"] as? Int, let tid = e["tid"] as? Int, let ts = e["ts"] as? Double,
                  let dur = e["dur"] as? Double else { return nil }
            return Span(pid: pid, tid: tid, name: e["name"] as? String ?? "", cat: e["cat"] as? String ?? "", start: ts, end: ts + dur,
                        args: e["args"] as? [String: Any] ?? [:])
        }
        var overlapped = 0  // buckets that ran while backward ran, over both ranks and steps
        for rank in 0..<2 {
            let steps = spans.filter { $0.pid == rank && $0.cat == "step" }
            #expect(steps.map(\.name) == ["step 3", "step 4"], "rank \(rank): \(steps.map(\.name))")
            for step in steps {
                let measured = (step.args["ms"] as? Double ?? 0) * 1000
                let inside = spans.filter { $0.pid == rank && $0.tid == 1 && $0.cat != "step" && $0.start >= step.start - 1 && $0.end <= step.end + 1 }
                let sum = inside.reduce(0) { $0 + ($1.end - $1.start) }
                #expect(abs(sum - measured) <= 0.05 * measured, "rank \(rank) \(step.name): spans \(sum) µs vs measured \(measured) µs")
                #expect(inside.contains { $0.cat == "forward" } && inside.contains { $0.cat == "backward" } && inside.contains { $0.name == "optimizer" })
                let backward = inside.filter { $0.cat == "backward" }
                let buckets = spans.filter { $0.pid == rank && $0.tid == 2 && $0.start >= step.start && $0.end <= step.end + 1 }
                #expect(buckets.contains { $0.name == (zero ? "reduce-scatter" : "all-reduce") && ($0.args["bytes"] as? Double ?? 0) > 0 })
                // Handed off while backward still ran (the overlap), and done by the step's end.
                let mine = lifetimes.filter { $0.pid == rank && $0.start >= step.start && $0.start <= step.end }
                #expect(mine.contains { b in backward.contains { $0.start < b.end && b.start < $0.end } }, "rank \(rank) \(step.name): no bucket handed off while backward ran")
                #expect(mine.allSatisfy { $0.end <= step.end + 1 }, "rank \(rank) \(step.name): a bucket finished after its step")
                overlapped += buckets.filter { b in backward.contains { $0.start < b.end && b.start < $0.end } }.count
            }
            if zero { #expect(spans.contains { $0.pid == rank && $0.tid == 2 && $0.name == "all-gather" }) }
        }
        #expect(overlapped > 0, "no bucket's collective ran while backward ran, on either rank")
        #expect(events.contains { $0["ph"] as? String == "M" && ($0["args"] as? [String: Any])?["name"] as? String == "rank 1" })

        for (steps, needle) in [("x-3", "--trace-steps"), ("4-2", "--trace-steps"), ("3-9", "outside the run")] {
            expectOneLineError(try CLI.run(trainArgs(config: cfg, out: dir + "/bad", steps: 5, extra: ["--trace-steps", steps])),
                               "--trace-steps \(steps)", mentioning: needle)
        }
    }
}
