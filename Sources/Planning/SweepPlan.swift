import Common
import Foundation
import GPT2

/// `sweep plan`'s numbers for each point of a sweep: memory per rank and wall time on stated hardware, from plan's
/// own step model, and the flags a grid can earn. `sweep plan --csv` stores them; `sweep report` puts each point's
/// prediction beside the time it took.
public struct SweepPrediction: Sendable, Equatable {
    public var name: String
    public var memoryBytes: Double, stepSeconds: Double, seconds: Double
    public var flags: [String]

    public static let csvHeader = "name,depth,width,heads,parameters,tokens,steps,lr,memory_bytes,step_seconds,seconds,flags"

    /// Every point: its activations and optimizer state against `memoryLimit` bytes per rank; its step from
    /// `model` (with this machine's measured forward and backward when `measure`, one timing per depth); its epochs
    /// over `dataTokens` against the sweep's max_epochs.
    public static func predict(_ sweep: Sweep, model: ScalingModel, nodes: Int, ranksPerNode: Int, measure: Bool,
                               memoryLimit: Double, dataTokens: Int) throws -> [(point: Sweep.Point, prediction: SweepPrediction)] {
        let ranks = nodes * ranksPerNode
        guard sweep.batchSize % ranks == 0 else {
            throw GPT2DistError(.usage, "the sweep's batch_size \(sweep.batchSize) is not divisible by \(ranks) ranks")
        }
        let micro = sweep.batchSize / ranks
        var timelines: [Int: ScalingModel.Timeline] = [:]
        return try sweep.points().map { p in
            let act = Double(GPT2Graph(model: GPT2Model(config: p.config), batch: micro, seqLen: sweep.seqLen, mode: .train).activationBytes)
            let memory = MemoryEstimate(config: p.config, microBatch: micro, seqLen: sweep.seqLen, ranks: ranks, zero: false,
                                        recompute: false, activationBytes: Int(act)).rootTotal
            if measure && timelines[p.depth] == nil && memory < memoryLimit {
                timelines[p.depth] = ScalingModel.Timeline.measure(config: p.config, microBatch: micro, seqLen: sweep.seqLen, recompute: false)
            }
            let step = model.step(config: p.config, seqLen: sweep.seqLen, microBatch: micro, accumulation: 1, nodes: nodes,
                                  ranksPerNode: ranksPerNode, zero: false, activationBytes: act, timeline: timelines[p.depth]).total
            var flags: [String] = []
            if memory > memoryLimit { flags.append("does not fit in \(Format.bytes(memoryLimit))") }
            let epochs = Double(p.tokens) / Double(dataTokens)
            if epochs > sweep.maxEpochs { flags.append(String(format: "%.1f epochs > max_epochs %g", epochs, sweep.maxEpochs)) }
            return (p, SweepPrediction(name: p.name, memoryBytes: memory, stepSeconds: step, seconds: step * Double(p.steps), flags: flags))
        }
    }

    public func csvRow(_ p: Sweep.Point) -> String {
        [p.name, String(p.depth), String(p.config.embDim), String(p.config.nHeads), String(p.parameters), String(p.tokens),
         String(p.steps), String(p.lr), String(format: "%.0f", memoryBytes), String(format: "%.6g", stepSeconds),
         String(format: "%.6g", seconds), "\"" + flags.joined(separator: "; ") + "\""].joined(separator: ",")
    }

    /// The predicted seconds by point name of a file `csvRow` wrote (rows of other shapes are a one-line error).
    public static func readSeconds(csv path: String) throws -> [String: Double] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw GPT2DistError(.usage, "cannot read \(path)") }
        var lines = text.split(separator: "\n")
        guard lines.first.map(String.init) == csvHeader else {
            throw GPT2DistError(.fileFormat, "\(path): not a plan written by `sweep plan --csv` (its header differs)")
        }
        lines.removeFirst()
        var seconds: [String: Double] = [:]
        for (i, line) in lines.enumerated() {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false)
            guard fields.count >= 11, let s = Double(fields[10]) else { throw GPT2DistError(.fileFormat, "\(path): line \(i + 2) is not a plan row") }
            seconds[String(fields[0])] = s
        }
        return seconds
    }
}
