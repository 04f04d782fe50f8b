import Distributed
import Foundation
import GPT2
import Planning
import Testing

/// The plan's model of a step, checked by hand: the FLOPs it charges to each gradient region (from the block
/// table), and how the bucket schedule hides communication behind backward (and, with ZeRO-1, the next forward).
struct PlanningTests {
    /// One block, C = 8, V = 1000, T = 4: every region's forward and backward FLOPs per token, worked out by hand.
    @Test func countedComputeChargesEachRegionItsOps() throws {
        let cfg = try GPT2Config(vocabSize: 1000, contextLength: 16, embDim: 8, nHeads: 2, nLayers: 1)
        #expect(cfg.gradientRegionNames == ["wte", "ln_f", "h.0.mlp.c_proj", "h.0.mlp.c_fc", "h.0.ln_2", "h.0.attn.c_proj",
                                            "h.0.attn.c_attn", "h.0.ln_1", "wpe"])
        // FLOP rate = tokens, so each entry is FLOPs per token.
        let line = ScalingModel.Timeline.counted(config: cfg, microBatch: 2, seqLen: 4, flopsPerRank: 8)
        // head 2VC | 0 | 4C·C·2 | 4C·C·2 | 0 | C·C·2 + attention 4CT | 3C·C·2 | 0 | 0
        #expect(line.forward == [16_000, 0, 512, 512, 0, 128 + 128, 384, 0, 0])
        // head 4VC | 0 | twice forward | ... | attn.c_attn 3C·C·4 + attention's backward 8CT
        #expect(line.backward == [32_000, 0, 1024, 1024, 0, 256, 768 + 256, 0, 0])
        // The total is nanoGPT's count without the elementwise ops: 6·(matrix weights + head) + 12·L·C·T.
        let matrices = Double(3 * 64 + 64 + 4 * 64 + 4 * 64 + 1000 * 8)
        #expect(line.forwardTotal + line.backwardTotal == 6 * matrices + 12 * 8 * 4)
    }

    /// Two nodes, one rank each, a link whose bytes cost nothing: every all-reduce of a bucket costs 2 latencies
    /// (2(k−1) hops), a reduce-scatter or all-gather 1. Two buckets: wte alone, then the rest of the model.
    @Test(arguments: [false, true]) func bucketsOverlapBackwardAsScheduled(zero: Bool) throws {
        let cfg = try GPT2Config(vocabSize: 1000, contextLength: 16, embDim: 8, nHeads: 2, nLayers: 1)
        let L = 1e-3
        var model = ScalingModel(flopsPerRank: 1e12, memoryBandwidthPerRank: 1e10, sharedMemoryBandwidth: 1e30,
                                 networkBandwidth: 1e30, latency: L)
        model.cpuSecondsPerByte = 0
        model.bucketBytes = Double(4 * cfg.vocabSize * cfg.embDim)  // wte's region fills one bucket exactly
        let schedule = BucketSchedule(regions: cfg.gradientRegions, bucketFloats: Int(model.bucketBytes / 4))
        try #require(schedule.buckets.count == 2 && schedule.buckets[0].region == 0)
        // Backward: wte's region takes 10L, ln_f's 1L; forward: the head 2L.
        let regions = cfg.gradientRegions.count
        var forward = [Double](repeating: 0, count: regions), backward = forward
        backward[0] = 10 * L; backward[1] = 1 * L; forward[0] = 2 * L
        let s = model.step(config: cfg, seqLen: 4, microBatch: 1, accumulation: 1, nodes: 2, ranksPerNode: 1, zero: zero,
                           activationBytes: 0, timeline: .init(forward: forward, backward: backward))
        #expect(abs(s.compute - 13 * L) < 1e-12)
        if zero {
            // Reduce-scatter: wte 10L → 11L; the rest ready at 11L, done at 12L: 1L past backward, + the token rows'
            // all-reduce (2L). All-gather in reverse during the next forward, after the rows (2L): the rest lands at
            // 3L, wte at 4L; the head waits for wte: forward ends at 4L + 2L = 6L instead of 2L.
            #expect(abs(s.exposedCommunication - (3 * L + 4 * L)) < 1e-12)
            #expect(abs(s.communication - 6 * L) < 1e-12)
        } else {
            // wte 10L → 12L; the rest ready at 11L, starts at 12L, done at 14L: 3L past backward, + the rows (2L).
            #expect(abs(s.exposedCommunication - 5 * L) < 1e-12)
            #expect(abs(s.communication - 6 * L) < 1e-12)
        }
        let n = Double(cfg.parameterCount)
        #expect(abs(s.optimizer - 28 * n / (zero ? 2 : 1) / 1e10) < 1e-15)
        // Memory per rank is the one formula `info` and train's startup use.
        let memory = MemoryEstimate(config: cfg, microBatch: 1, seqLen: 4, ranks: 2, zero: zero, recompute: false,
                                    activationBytes: 0, bucketMb: model.bucketBytes / 1_048_576)
        #expect(s.bytesPerRank == memory.rootTotal)
    }
}
