import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";

export const AZ_COUNT = 2;

export interface Network {
    vpc: aws.ec2.Vpc;
    /** One per AZ: the ALB and the NAT gateway. */
    publicSubnets: aws.ec2.Subnet[];
    /** One per AZ: tasks, RDS, Amazon MQ; outbound through the NAT gateway. */
    privateSubnets: aws.ec2.Subnet[];
}

/**
 * A VPC over two AZs: a public subnet (internet gateway) and a private subnet
 * (NAT gateway) in each. A single NAT gateway keeps the bill small; outbound
 * traffic of the private subnets depends on its AZ.
 */
export function createNetwork(prefix: string, tags: Record<string, string>): Network {
    const azs = aws.getAvailabilityZonesOutput({ state: "available" });
    const az = (i: number) =>
        azs.names.apply((names) => {
            if (names.length < AZ_COUNT) {
                throw new Error(`the region has ${names.length} available AZs, ${AZ_COUNT} needed`);
            }
            return names[i];
        });

    const vpc = new aws.ec2.Vpc("vpc", {
        cidrBlock: "10.0.0.0/16",
        enableDnsSupport: true,
        enableDnsHostnames: true,
        tags: { ...tags, Name: prefix },
    });

    const igw = new aws.ec2.InternetGateway("igw", { vpcId: vpc.id, tags: { ...tags, Name: prefix } });
    const publicRoutes = new aws.ec2.RouteTable("public", {
        vpcId: vpc.id,
        routes: [{ cidrBlock: "0.0.0.0/0", gatewayId: igw.id }],
        tags: { ...tags, Name: `${prefix}-public` },
    });

    const publicSubnets: aws.ec2.Subnet[] = [];
    const privateSubnets: aws.ec2.Subnet[] = [];
    for (let i = 0; i < AZ_COUNT; i++) {
        const subnet = new aws.ec2.Subnet(`public-${i}`, {
            vpcId: vpc.id,
            availabilityZone: az(i),
            cidrBlock: `10.0.${i}.0/24`,
            mapPublicIpOnLaunch: true,
            tags: { ...tags, Name: `${prefix}-public-${i}`, tier: "public" },
        });
        new aws.ec2.RouteTableAssociation(`public-${i}`, { subnetId: subnet.id, routeTableId: publicRoutes.id });
        publicSubnets.push(subnet);
    }

    const natIp = new aws.ec2.Eip("nat", { domain: "vpc", tags: { ...tags, Name: `${prefix}-nat` } });
    const nat = new aws.ec2.NatGateway(
        "nat",
        { allocationId: natIp.id, subnetId: publicSubnets[0].id, tags: { ...tags, Name: prefix } },
        { dependsOn: [igw] },
    );
    const privateRoutes = new aws.ec2.RouteTable("private", {
        vpcId: vpc.id,
        routes: [{ cidrBlock: "0.0.0.0/0", natGatewayId: nat.id }],
        tags: { ...tags, Name: `${prefix}-private` },
    });
    for (let i = 0; i < AZ_COUNT; i++) {
        const subnet = new aws.ec2.Subnet(`private-${i}`, {
            vpcId: vpc.id,
            availabilityZone: az(i),
            cidrBlock: `10.0.${10 + i}.0/24`,
            mapPublicIpOnLaunch: false,
            tags: { ...tags, Name: `${prefix}-private-${i}`, tier: "private" },
        });
        new aws.ec2.RouteTableAssociation(`private-${i}`, { subnetId: subnet.id, routeTableId: privateRoutes.id });
        privateSubnets.push(subnet);
    }

    return { vpc, publicSubnets, privateSubnets };
}

export const ids = (subnets: aws.ec2.Subnet[]): pulumi.Output<string>[] => subnets.map((s) => s.id);
