import Common
import Foundation

/// RUN_DIR/status.json: where a run stands, for launch scripts and people (scripts read this and metrics.h5,
/// never the trainer's console wording). Rank 0 rewrites it atomically when the run starts, after every
/// checkpoint and when it ends. A process killed outright leaves `running` behind: a launcher that sees its job
/// gone while the file still says `running` knows the run died.
public struct RunStatus: Codable, Equatable, Sendable {
    public enum State: String, Codable, Sendable {
        /// Training (or about to: settings checked, model restored).
        case running
        /// Reached --steps; the last checkpoint holds the final step.
        case finished
        /// Stopped early by a signal; the checkpoint holds the step it stopped at: resume it.
        case stopped
        /// Ended by an error after it started; `reason` says which. Earlier checkpoints are intact.
        case failed
    }

    public static let fileName = "status.json"
    public static let formatName = "gpt2-dist run status"
    public static let formatVersion = 1

    public var format = RunStatus.formatName
    public var version = RunStatus.formatVersion
    public var state: State
    /// Optimizer steps completed, and the run's target (--steps).
    public var step: Int, steps: Int
    /// The newest checkpoint in the run directory (file name, as `latest` holds it) and its step; nil before the first.
    public var checkpoint: String?, checkpointStep: Int?
    /// Why the run is in this state, in words: "training", "reached --steps", "SIGTERM", or the error.
    public var reason: String
    public var ranks: Int
    /// The model's parameter count (for plots against training FLOPs); nil in files of older runs.
    public var parameters: Int?
    /// Peak resident memory of each rank in bytes, once the run has ended normally.
    public var peakRSSBytes: [Int]?
    /// Host and process id of rank 0, and when this was written (ISO 8601, UTC).
    public var host: String, pid: Int32, updated: String

    enum CodingKeys: String, CodingKey {
        case format, version, state, step, steps, checkpoint, reason, ranks, parameters, host, pid, updated
        case checkpointStep = "checkpoint_step", peakRSSBytes = "peak_rss_bytes"
    }

    public init(state: State, step: Int, steps: Int, checkpoint: String? = nil, checkpointStep: Int? = nil, reason: String,
                ranks: Int, parameters: Int? = nil, peakRSSBytes: [Int]? = nil) {
        self.state = state; self.step = step; self.steps = steps; self.checkpoint = checkpoint
        self.checkpointStep = checkpointStep; self.reason = reason; self.ranks = ranks; self.parameters = parameters
        self.peakRSSBytes = peakRSSBytes
        host = ProcessInfo.processInfo.hostName
        pid = getpid()
        updated = ISO8601DateFormatter().string(from: Date())
    }

    public static func path(runDirectory: String) -> String { runDirectory + "/" + fileName }

    /// Writes the file atomically: a reader sees the previous status or this one, never a mix.
    public func write(runDirectory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var status = self
        status.updated = ISO8601DateFormatter().string(from: Date())
        let text = String(decoding: try encoder.encode(status), as: UTF8.self) + "\n"
        try AtomicFile.write(text: text, to: Self.path(runDirectory: runDirectory))
    }

    /// Reads a run directory's status; nil when it has none.
    public static func read(runDirectory: String) throws -> RunStatus? {
        let path = path(runDirectory: runDirectory)
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let status: RunStatus
        do { status = try JSONDecoder().decode(RunStatus.self, from: data) } catch {
            throw GPT2DistError(.fileFormat, "\(path) is not a gpt2-dist run status (\(error))")
        }
        guard status.format == formatName, status.version <= formatVersion else {
            throw GPT2DistError(.fileFormat, "\(path): format \(status.format) version \(status.version) is newer than this gpt2-dist reads")
        }
        return status
    }
}

/// RUN/baselines.json: what `eval --baselines` measured for a run's checkpoint (count-based unigram and bigram models
/// on the same positions), kept so the run's plot can draw them beside its losses.
public struct RunBaselines: Codable, Equatable, Sendable {
    public static let fileName = "baselines.json"
    public var unigram: Double, bigram: Double
    /// Training tokens the counts came from, and the checkpoint step the model was evaluated at.
    public var trainTokens: Int, step: Int

    enum CodingKeys: String, CodingKey { case unigram, bigram, step, trainTokens = "train_tokens" }

    public init(unigram: Double, bigram: Double, trainTokens: Int, step: Int) {
        self.unigram = unigram; self.bigram = bigram; self.trainTokens = trainTokens; self.step = step
    }

    public func write(runDirectory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(text: String(decoding: try encoder.encode(self), as: UTF8.self) + "\n", to: runDirectory + "/" + Self.fileName)
    }

    /// nil when the run has none (or an unreadable one: the plot then leaves the lines out).
    public static func read(runDirectory: String) -> RunBaselines? {
        guard let data = FileManager.default.contents(atPath: runDirectory + "/" + fileName) else { return nil }
        return try? JSONDecoder().decode(RunBaselines.self, from: data)
    }
}
